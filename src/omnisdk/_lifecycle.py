"""What becomes of a client's deferred writes when its process ends or forks.

- A normal exit (the script ends, `sys.exit`): an `atexit` hook writes what each client's
  outbox still holds in memory to disk and delivers what it can within the client's
  `exit_timeout`; what is left stays on disk (logged) for the next client on that `data_dir`.
- `multiprocessing` children (a `Process`, `Pool` workers) leave through `os._exit`, which
  skips `atexit`: a finaliser registered in each child does the same instead. `Pool.terminate()`
  (and `with Pool()`) ends workers with SIGTERM: a handler in the child, installed only where
  SIGTERM has its default action, writes the outbox to disk, then lets the signal end it.
  A SIGTERM that reaches a process already in its exit hook (a worker leaving by itself as
  `terminate()` signals it) only cuts the hook's delivery short: the hook is ending the process.
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
# An exit hook is running in this process (or has run: the process is ending). A SIGTERM
# handler runs on the main thread in the middle of whatever it was doing, possibly that hook
# holding an outbox's lock; doing the hook's work again there would wait for that lock.
_ending = False
# SIGTERM arrived while the exit hook ran: it delivers no more (what is left stays on disk).
_cut_short = False


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
    global _ending
    _ending = True
    for client in list({*_CLIENTS, *_HOLDING}):
        try:
            client._at_exit(deliver)
        except Exception:  # one client's failure must not keep the others' writes from disk
            log.exception("the exit hook of an omnisdk client failed")


def _forget_parent() -> None:
    global _ending, _cut_short
    _ending = _cut_short = False  # a child forked while a parent's thread ran an exit hook
    for client in list({*_CLIENTS, *_HOLDING}):
        client._after_fork()


def _on_sigterm(signum: int, frame: object) -> None:
    global _cut_short
    if _ending:
        _cut_short = True  # the interrupted hook writes to disk, stops delivering, and ends
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _end_all(deliver=False)  # terminate() means now: to disk only; the lease holder sends
    os.kill(os.getpid(), signal.SIGTERM)


def _in_multiprocessing_child(_: object) -> None:
    # Run by multiprocessing in each child it starts, after it has cleared the finalisers the
    # child inherited; a high priority runs it before the finalisers of lower ones.
    multiprocessing.util.Finalize(None, _end_all, args=(True,), exitpriority=10)
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _on_sigterm)


class _Hook:  # multiprocessing's after-fork registry holds its objects by weak reference
    pass


_HOOK = _Hook()
atexit.register(_end_all, True)
os.register_at_fork(after_in_child=_forget_parent)
multiprocessing.util.register_after_fork(_HOOK, _in_multiprocessing_child)
