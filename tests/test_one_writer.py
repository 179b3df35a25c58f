"""one_writer: on SQLite the threads of a process take turns at writing, so none meets a locked file."""
import threading

from sqlalchemy import text

from webapp.db import make_engine
from webapp.one_writer import one_writer


def test_threads_that_write_at_once_on_sqlite_take_turns_instead_of_finding_the_file_locked(tmp_path):
    # busy_timeout=0: a writer that found the file locked would fail at once ("database is locked")
    engine = make_engine(f"sqlite:///{tmp_path / 'writes.sqlite3'}", busy_timeout=0)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counted (thread INTEGER, number INTEGER)"))
    start, errors = threading.Barrier(4), []

    def write(thread: int) -> None:
        start.wait()
        try:
            for number in range(50):
                with one_writer(engine), engine.begin() as connection:
                    connection.execute(text("INSERT INTO counted VALUES (:t, :n)"), {"t": thread, "n": number})
                    connection.execute(text("UPDATE counted SET number = number WHERE thread = :t"), {"t": thread})
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM counted")).scalar() == 200
    engine.dispose()


def test_it_is_reentrant_and_the_same_for_one_engine(tmp_path):
    """A write section that calls code with its own section (outbox.submit from such code) goes on."""
    engine = make_engine(f"sqlite:///{tmp_path / 'reentrant.sqlite3'}")
    with one_writer(engine), one_writer(engine):
        pass
    assert one_writer(engine) is one_writer(engine)
    engine.dispose()
