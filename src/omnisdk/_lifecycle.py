"""What becomes of a client's deferred writes when its process ends or forks.

- A normal exit (the script ends, `sys.exit`): an `atexit` hook writes what each client's
  outbox still holds in memory to disk and delivers what it can within the client's
  `exit_timeout`; what is left stays on disk (logged) for the next client on that `data_dir`.
- `multiprocessing` children (a `Process`, `Pool` workers) leave through `os._exit`, which
  skips `atexit`: a finaliser registered in each child does the same instead. `Pool.terminate()`
  (and `with Pool()`) ends workers with SIGTERM: in a child where SIGTERM has its default
  action, a thread of ours waits for it (`sigwait`, the signal blocked in every thread), writes
  the outbox to disk, then lets the signal end the process. An exit hook running meanwhile on
  the main thread (a worker leaving by itself as `terminate()` signals it) stops delivering.
- `fork()`: every client forgets its parent's connections and threads (outbox, sender, HTTP
  connection pool) and opens its own on first use, so nothing is shared across the fork.
- kill -9, a power loss, `os._exit` in your own code: nothing runs; what is on disk survives
  (see `max_unsynced`).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import signal
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("omnisdk.outbox")


class Ending(Protocol):
    def _at_exit(self, deliver: bool) -> None: ...

    def _after_fork(self) -> None: ...


_CLIENTS: weakref.WeakSet[Ending] = weakref.WeakSet()
# Clients with an open outbox, held until they are closed: a client dropped without close()
# (an AsyncClient whose coroutine returned, say) would otherwise be collected before the exit
# hook runs, and what its outbox held only in memory would die with the process. A client
# that never queued anything is held weakly, like any object its owner drops.
_HOLDING: set[Ending] = set()
# A signal sent to the process goes to any thread that does not block it. Taken by a background
# thread, SIGTERM or SIGINT would wait for the main thread to run Python code again, which a
# main thread blocked in a lock (an idle Pool worker) never does: the process would hang.
_MAIN_THREAD_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# SIGTERM arrived while an exit hook ran: it delivers no more (what is left stays on disk).
_cut_short = False
# This process blocked SIGTERM in its main thread, for the thread that waits for it.
_watched = False


def cut_short() -> bool:
    """Whether a running exit hook must stop delivering now (SIGTERM came meanwhile)."""
    return _cut_short


def start_daemon(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread that never takes SIGTERM or SIGINT (they stay the main thread's)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS)
    try:
        thread.start()  # a new thread inherits the mask in force when it is made
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    return thread


def register(client: Ending) -> None:
    _CLIENTS.add(client)


def hold(client: Ending) -> None:
    """Keep `client` alive until it is closed (its outbox is open)."""
    _HOLDING.add(client)


def unregister(client: Ending) -> None:
    _CLIENTS.discard(client)
    _HOLDING.discard(client)


def _end_all(deliver: bool) -> None:
    for client in list({*_CLIENTS, *_HOLDING}):
        try:
            client._at_exit(deliver)
        except Exception:  # one client's failure must not keep the others' writes from disk
            log.exception("the exit hook of an omnisdk client failed")


def _forget_parent() -> None:
    global _cut_short, _watched
    _cut_short = False
    if _watched:  # the waiting thread stayed in the parent: SIGTERM acts here as by default
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        _watched = False
    for client in list({*_CLIENTS, *_HOLDING}):
        client._after_fork()


def _take_sigterm() -> None:
    """Wait for SIGTERM; then write every outbox to disk and let the signal end the process.

    Not a Python signal handler: one runs only when the main thread next runs Python code,
    and a signal that arrived just before the main thread blocked in a lock (an idle Pool
    worker waiting for work) left its handler pending for good. The worker never ended and
    `Pool.terminate()` waited in `join` (1 run in about 40 under load). A handler also ran in
    the middle of whatever the main thread did, its exit hook included, and waited there for
    the locks that frame held. This thread takes the locks in turn like any other."""
    global _cut_short
    signal.sigwait({signal.SIGTERM})
    _cut_short = True  # an exit hook running on the main thread delivers no more
    _end_all(deliver=False)  # terminate() means now: to disk only; the lease holder sends
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # its default action: the end


def _in_multiprocessing_child(_: object) -> None:
    # Run by multiprocessing in each child it starts, after it has cleared the finalisers the
    # child inherited; a high priority runs it before the finalisers of lower ones.
    global _watched
    multiprocessing.util.Finalize(None, _end_all, args=(True,), exitpriority=10)
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        _watched = True
        start_daemon(_take_sigterm, "omnisdk-sigterm")


class _Hook:  # multiprocessing's after-fork registry holds its objects by weak reference
    pass


_HOOK = _Hook()
atexit.register(_end_all, True)
os.register_at_fork(after_in_child=_forget_parent)
multiprocessing.util.register_after_fork(_HOOK, _in_multiprocessing_child)
