"""DeadlineFile's decision at the end of a read that the deadline ended: a line cut short is no
reply, a whole line is the server's reply however late it came (dropping a 250 after DATA would
send the message twice). The deadline is made to end during the read (a clock, not a peer: which
comes first, the last byte or the deadline, cannot be arranged over a socket)."""
import socket

import pytest

from webapp.mail.deadline import Deadline, DeadlineExceeded, DeadlineFile


class EndsDuringTheRead(Deadline):
    """Time left before the read; over once it returned."""

    def __init__(self):
        super().__init__(5)

    def over(self) -> bool:
        return True


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_whole_line_that_came_as_the_deadline_ended_is_the_reply(pair):
    ours, theirs = pair
    theirs.sendall(b"250 2.0.0 Ok: queued as 4F2A\r\n")
    assert DeadlineFile(ours, EndsDuringTheRead()).readline(8193) == b"250 2.0.0 Ok: queued as 4F2A\r\n"


def test_a_line_cut_short_by_the_deadline_is_no_reply(pair):
    ours, theirs = pair
    theirs.sendall(b"250 2.0.0 Ok: que")
    theirs.shutdown(socket.SHUT_WR)  # as the watchdog's shutdown ends the read
    with pytest.raises(DeadlineExceeded) as cut:
        DeadlineFile(ours, EndsDuringTheRead()).readline(8193)
    assert cut.value.begun


def test_nothing_before_the_deadline_is_no_reply_not_begun(pair):
    ours, theirs = pair
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(DeadlineExceeded) as cut:
        DeadlineFile(ours, EndsDuringTheRead()).readline(8193)
    assert not cut.value.begun
