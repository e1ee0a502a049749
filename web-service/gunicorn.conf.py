"""gunicorn settings for predict.py.

    gunicorn -c web-service/gunicorn.conf.py predict:app    # from the repository root
    gunicorn predict:app                                     # from web-service/ (the container)

gunicorn reads ./gunicorn.conf.py from the directory it starts in (before applying --chdir, so
`gunicorn --chdir web-service predict:app` alone would not find this file); `chdir` below then
puts predict.py on the import path whichever way it was started.

Everything a deployment changes comes from the environment, read through ride_duration.settings
(BIND, WEB_CONCURRENCY, GUNICORN_THREADS, PROMETHEUS_MULTIPROC_DIR; see web-service/README.md).
BIND is loopback unless set: in production gunicorn sits behind nginx (web-service/nginx/), which
waits for slow clients so that gunicorn's few threads never do.
"""

import atexit
import os
import selectors
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

from gunicorn.workers.gthread import ThreadWorker

chdir = os.path.dirname(os.path.abspath(__file__))
if chdir not in sys.path:  # the container keeps ride_duration/ next to this file
    sys.path.insert(0, chdir)

from ride_duration.settings import WEB_SERVICE, SettingError, Settings, export  # noqa: E402 - needs the path above

try:
    settings = Settings.from_environ(groups=WEB_SERVICE)
except SettingError as error:
    sys.exit(f"gunicorn.conf.py: {error}")


class GracefulThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, except that a worker on its way out (SIGHUP's reload, a rolling restart,
    SIGTERM) does not close a connection under a client it has just told to keep it alive.

    gthread decides "Connection: keep-alive" when a request starts and, when the request is done, closes
    the connection if the worker has been told to exit meanwhile: the client, told keep-alive, sends its
    next request down a connection that is closed unanswered. Here that connection waits in the worker's
    poller instead, like any kept-alive one; its next request is answered (with "Connection: close", as
    gthread answers every request once exiting), or the keep-alive timeout closes it. The worker exits
    when none is left, within graceful_timeout, as before.

    And a client's next request that arrived while gthread drained the body the app left unread (a
    refused one) is answered at once: the drain read it off the socket with the body's last bytes, so
    the socket never turns readable for it, and gthread would wait in vain for the keep-alive timeout
    and close the connection under it.
    """

    def finish_request(self, conn, fs):
        kept_alive = not fs.cancelled() and fs.exception() is None and fs.result() is True
        unreader = getattr(conn.parser, "unreader", None)
        if kept_alive and unreader is not None and unreader.buf.getbuffer().nbytes:
            self.enqueue_req(conn)
            return
        if not self.alive and kept_alive:
            conn.sock.setblocking(False)
            conn.set_timeout()
            self.keepalived_conns.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))
            return
        super().finish_request(conn, fs)


bind = settings.bind
workers = settings.web_concurrency
# One worker process per core: a request is CPU-bound Python, more processes only add switching.
# gthread keeps client connections alive between requests (the sync worker closes each one after
# a single response); idle connections wait in its poller, and the threads overlap one request's
# socket I/O with another's Python. web-service/README.md has the measurements behind these defaults.
# GracefulThreadWorker (above) is gthread with one race of its restarts mended.
worker_class = GracefulThreadWorker
threads = settings.gunicorn_threads
keepalive = 5
# Load the model once in the master, before forking: the workers share its memory, and a bad
# MODEL_URI ends start-up with predict.py's one-line reason instead of a crash loop per worker.
preload_app = True
# No control socket: its default path is shared by every gunicorn of the user, and several run at once here.
control_socket_disable = True

# prometheus_client's multiprocess mode: every worker writes its metrics to files in this folder
# and /metrics adds them up. It must be set before predict.py imports prometheus_client and be
# empty at start, hence a fresh folder per run (removed when the master exits, even when start-up
# fails) unless the deployment names one; a named one is emptied of the files of earlier runs.
if settings.prometheus_multiproc_dir:
    # gunicorn runs this file again on SIGHUP's reload, when the workers' files are live: only a
    # master that has not imported prometheus_client yet (none of its metrics exist) is starting.
    if "prometheus_client" not in sys.modules:
        for stale in Path(settings.prometheus_multiproc_dir).glob("*.db"):  # the files prometheus_client writes
            stale.unlink(missing_ok=True)
else:
    metrics_dir = tempfile.mkdtemp(prefix="predict-metrics-")
    export({"PROMETHEUS_MULTIPROC_DIR": metrics_dir})

    def remove_metrics_dir(folder=metrics_dir, master_pid=os.getpid()):  # noqa: B008 - the master's pid, taken once
        if os.getpid() == master_pid:  # workers inherit this handler; only the master cleans up
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove_metrics_dir)


def when_ready(server):
    """Remove the master's live-gauge files before it forks the workers: loading the app named the model in
    ride_duration_model_info, in a file of the master's, which no worker's swap would ever set to 0, so the
    replaced model would go on being reported as served. Each worker names its model in its own file."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())


def post_worker_init(worker):
    """Name the served model in this worker's metrics, and follow the model's registry alias
    (MODEL_URI=models:/NAME@ALIAS) from each worker, once forked.

    The master loads the model before forking (preload_app) but never polls: a thread it started would
    not run in the workers, and each worker serves its own copy of the model, so each checks and swaps
    its own. An app without follow_model (the benchmark's floor) has nothing to follow.
    """
    metrics = getattr(worker.wsgi, "metrics", None)
    if metrics is not None:
        metrics.shown = None  # what the master named, in the file when_ready removed
        metrics.show_model(worker.wsgi.service)
    follow_model = getattr(worker.wsgi, "follow_model", None)
    if follow_model is not None:
        follow_model()


def child_exit(server, worker):
    """Drop a dead worker's live-gauge files, so that it no longer counts as serving a model."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# gunicorn drains a body the app left unread (a refused one) before reusing the connection, and
# gives up once it has drained 64 KiB, a body of exactly 64 KiB included; it then closes the
# connection, although its answer said keep-alive.
UNREAD_BODY_DRAIN_BYTES = 64 * 1024


def pre_request(worker, req):
    """Say "Connection: close" up front for a body gunicorn might not be able to drain (declared
    64 KiB or more, or chunked), so that a client never sends its next request down a dead connection."""
    headers = dict(req.headers)
    length = headers.get("CONTENT-LENGTH", "0")
    if "chunked" in headers.get("TRANSFER-ENCODING", "").lower() or (
        length.isdigit() and int(length) >= UNREAD_BODY_DRAIN_BYTES
    ):
        req.must_close = True
