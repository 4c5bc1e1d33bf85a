"""What becomes of a client's deferred writes when its process ends or forks.

- A normal exit (the script ends, `sys.exit`): an `atexit` hook writes what each client's
  outbox still holds in memory to disk and delivers what it can within the client's
  `exit_timeout`; what is left stays on disk (logged) for the next client on that `data_dir`.
- `multiprocessing` children (a `Process`, `Pool` workers) leave through `os._exit`, which
  skips `atexit`: a finaliser registered in each child does the same instead. `Pool.terminate()`
  (and `with Pool()`) ends workers with SIGTERM: a handler in the child, installed only where
  SIGTERM has its default action, writes the outbox to disk, then lets the signal end it; a
  thread woken by the signal makes sure the handler runs (`_watch_sigterm`). A SIGTERM that
  reaches a process already in its exit hook only cuts the hook's delivery short.
- `fork()`: every client forgets its parent's connections and threads (outbox, sender, HTTP
  connection pool) and opens its own on first use, so nothing is shared across the fork.
- kill -9, a power loss, `os._exit` in your own code: nothing runs; what is on disk survives
  (see `max_unsynced`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.util
import os
import signal
import threading
import time
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
# An exit hook has begun in this process (it ends the process): a SIGTERM handler that
# interrupts it on the main thread must not run it again there, below the locks it holds.
_ending = False
# SIGTERM arrived while an exit hook ran: it delivers no more (what is left stays on disk).
_cut_short = False
# The SIGTERM handler has begun: later SIGTERMs (the watcher's nudges, a second terminate())
# return at once.
_terminating = False
# The signal wakeup pipe this process's SIGTERM watcher reads (read, write ends), or None.
_wakeup: tuple[int, int] | None = None


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
    global _ending, _cut_short, _terminating, _wakeup
    _ending = _cut_short = _terminating = False  # a child forked while a parent's hook ran
    if _wakeup is not None:  # the watcher stayed in the parent
        with contextlib.suppress(ValueError):  # not forked from the main thread
            signal.set_wakeup_fd(-1)
        for end in _wakeup:
            os.close(end)
        _wakeup = None
    for client in list({*_CLIENTS, *_HOLDING}):
        client._after_fork()


def _on_sigterm(signum: int, frame: object) -> None:
    global _cut_short, _terminating
    if _terminating:  # already ending: a nudge of the watcher, or a second SIGTERM
        return
    _terminating = True
    if _ending:
        # It interrupted an exit hook on this thread, whose locks are held below this frame:
        # that hook writes to disk, stops delivering (cut short) and ends the process.
        _cut_short = True
        return
    _end_all(deliver=False)  # terminate() means now: to disk only; the lease holder sends
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _watch_sigterm(wakeup: int) -> None:
    """Make sure the handler runs once SIGTERM has come. A Python handler runs only when the
    main thread next runs Python code: a signal that arrived just before an idle Pool worker
    blocked in its task-queue lock left the handler pending for good, the worker never ended
    and `Pool.terminate()` waited in `join` (1 run in about 45 under load). The signal's
    wakeup byte reaches this thread; it then signals the main thread again, which interrupts
    the blocked wait, until the handler has begun."""
    while signal.SIGTERM not in os.read(wakeup, 512):
        pass
    main = threading.main_thread().ident
    assert main is not None
    while not _terminating:
        signal.pthread_kill(main, signal.SIGTERM)
        time.sleep(0.05)


def _in_multiprocessing_child(_: object) -> None:
    # Run by multiprocessing in each child it starts, after it has cleared the finalisers the
    # child inherited; a high priority runs it before the finalisers of lower ones.
    global _wakeup
    multiprocessing.util.Finalize(None, _end_all, args=(True,), exitpriority=10)
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _on_sigterm)
        read, write = os.pipe()  # not inherited by subprocesses (PEP 446)
        os.set_blocking(write, False)
        theirs = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        if theirs != -1:  # someone else's (asyncio's): leave it theirs, and the handler alone
            signal.set_wakeup_fd(theirs)
            os.close(read)
            os.close(write)
            return
        _wakeup = (read, write)
        start_daemon(lambda: _watch_sigterm(read), "omnisdk-sigterm")


class _Hook:  # multiprocessing's after-fork registry holds its objects by weak reference
    pass


_HOOK = _Hook()
atexit.register(_end_all, True)
os.register_at_fork(after_in_child=_forget_parent)
multiprocessing.util.register_after_fork(_HOOK, _in_multiprocessing_child)
