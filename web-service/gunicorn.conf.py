"""gunicorn settings for predict.py.

    gunicorn -c web-service/gunicorn.conf.py predict:app    # from the repository root
    gunicorn predict:app                                     # from web-service/ (the container)

gunicorn reads ./gunicorn.conf.py from the directory it starts in (before applying --chdir, so
`gunicorn --chdir web-service predict:app` alone would not find this file); `chdir` below then
puts predict.py on the import path whichever way it was started.

Everything a deployment changes comes from the environment:
  BIND              address to listen on (default 0.0.0.0:9696)
  WEB_CONCURRENCY   worker processes (default 2: one per core of a small machine)
  GUNICORN_THREADS  threads per worker (default 4)
"""

import atexit
import os
import shutil
import tempfile

chdir = os.path.dirname(os.path.abspath(__file__))
bind = os.environ.get("BIND", "0.0.0.0:9696")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# One worker process per core: a request is CPU-bound Python, more processes only add switching.
# gthread keeps client connections alive between requests (the sync worker closes each one after
# a single response); idle connections wait in its poller, and the threads overlap one request's
# socket I/O with another's Python. Measured on 2 cores at 8 connections (benchmarks/bench_web.py):
# 2 sync workers ~1,300 req/s, 2 x 1 thread ~2,700, 2 x 2 ~4,100, 2 x 4 ~4,300, 3 x 2 ~4,500 (noise
# on a shared machine is +-30%, so beyond 2 x 2 the differences are within it).
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
keepalive = 5
# Load the model once in the master, before forking: the workers share its memory, and a bad
# MODEL_URI ends start-up with predict.py's one-line reason instead of a crash loop per worker.
preload_app = True
# No control socket: its default path is shared by every gunicorn of the user, and several run at once here.
control_socket_disable = True

# prometheus_client's multiprocess mode: every worker writes its metrics to files in this folder
# and /metrics adds them up. It must be set before predict.py imports prometheus_client and be
# empty at start, hence a fresh folder per run (removed when the master exits, even when start-up
# fails) unless the deployment names one.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="predict-metrics-")

    def remove_metrics_dir(folder=os.environ["PROMETHEUS_MULTIPROC_DIR"], master_pid=os.getpid()):  # noqa: B008 - the master's pid, taken once
        if os.getpid() == master_pid:  # workers inherit this handler; only the master cleans up
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove_metrics_dir)


def child_exit(server, worker):
    """Drop a dead worker's live-gauge files, so that it no longer counts as serving a model."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# gunicorn drains at most 64 KiB of a body the app left unread (a refused, too-large one) before
# reusing the connection; past that it closes the connection, although its answer said keep-alive.
UNREAD_BODY_DRAIN_BYTES = 64 * 1024


def pre_request(worker, req):
    """Say "Connection: close" up front for a body gunicorn might not be able to drain (declared
    over 64 KiB, or chunked), so that a client never sends its next request down a dead connection."""
    headers = dict(req.headers)
    length = headers.get("CONTENT-LENGTH", "0")
    if "chunked" in headers.get("TRANSFER-ENCODING", "").lower() or (
        length.isdigit() and int(length) > UNREAD_BODY_DRAIN_BYTES
    ):
        req.must_close = True
