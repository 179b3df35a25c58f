"""A WSGI application served over HTTPS on 127.0.0.1 in a thread, for the HTTP peers
(OAuth authorization server, Microsoft Graph, Gmail API, Exchange Web Services).

    server = HttpsPeer(wsgi_app, ssl_context)   # started at once, on a free port
    server.url                                   # "https://127.0.0.1:<port>"
    server.stop()
"""
import ssl
import threading

from werkzeug.serving import make_server


class HttpsPeer:
    def __init__(self, app, context: ssl.SSLContext | None, host: str = "127.0.0.1"):
        self._server = make_server(host, 0, app, threaded=True, ssl_context=context)
        self.port = self._server.server_port
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"https-peer-{self.port}")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
