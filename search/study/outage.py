"""Riding out storage outages: a database server restarting, a managed database failing over.

Once a worker has opened its storage (a failure then is reported at once, in one line: a wrong URL is likelier than
an outage), a storage call that fails on the connection (refused, reset, closed by the server, timed out) is retried
with exponential backoff for up to ``storage_outage_s`` seconds (the study file), counted from the first failure.
Errors of the database itself (an integrity error, bad SQL, a finished trial) are not retried. Meanwhile:

- training goes on: the running trial's per-epoch writes (intermediate values, user and system attributes) are
  buffered and delivered in order by a background thread as soon as the storage answers; reads of the study's
  trials (the early stopper's) return what was last read;
- everything else waits: the trial's final state (after its buffered writes), claiming the next trial, the study
  locks (:mod:`search.study.locks`);
- heartbeats that fail are skipped. When the storage is back this worker's running trials beat at once, and for
  ``grace_period`` + ``MAX_DELAY_S`` seconds this worker marks no trial stale: the other workers' last heartbeats
  are as old as the outage, and they need up to a heartbeat interval to beat again, or, for a trial whose result
  waits in the retry backoff (its heartbeat thread has stopped with its objective), up to ``MAX_DELAY_S`` to try
  again and beat. A worker that did not see the outage (one
  started after it) judges heartbeats by their age as usual: if the outage plus one interval outlasted
  ``grace_period``, it may fail and re-queue a live trial; the live worker then drops that trial's result.

When the outage outlasts the limit the worker stops with one line (:class:`StorageOutage`, exit code 75,
EX_TEMPFAIL). Its trial stays RUNNING with its resume checkpoint: ``grace_period`` after its last heartbeat another
worker, or the next start, marks it FAILED and re-queues it, and the retry resumes from the checkpoint the storage
names (heartbeats off: nothing re-queues it).

A retry after a lost reply must not do a write twice. Trial creation carries a token (a system attribute): a retry
first looks for a trial with that token, and extra copies (Optuna's own retry loop in ``create_new_trial`` can make
them) are marked FAILED, so no RUNNING trial is left that nobody runs and no heartbeat could ever declare dead.
Finishing a trial that a lost reply already finished is taken as done; a queued trial whose start (WAITING ->
RUNNING) lost its reply gets one heartbeat, so that if it was ours it goes stale and is re-queued.
"""

from __future__ import annotations

import copy
import itertools
import os
import random
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search import optuna_compat as compat

EXIT_CODE = 75  # EX_TEMPFAIL from sysexits.h: a temporary failure, try again later
CREATE_TOKEN = "micronet:create_token"  # trial system attribute: which create_new_trial call made the trial

FIRST_DELAY_S, MAX_DELAY_S = 0.25, 5.0  # backoff: doubles from the first to the last, with jitter

# libpq settings for a server that vanishes without closing its connections (a failover, a dead host): a connection
# then fails after ~30 s (unacknowledged data, idle keepalives) instead of the system's ~15-minute TCP timeout
POSTGRES_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 4,
                       "tcp_user_timeout": 30_000}


class StorageOutage(BaseException):
    """The storage stayed unreachable longer than ``storage_outage_s``.

    A BaseException, like KeyboardInterrupt: it must pass the ``except Exception`` of Optuna's trial loop and of the
    objective, which would tell the storage the trial FAILED (it cannot take it) and delete the trial's resume
    checkpoint, which the re-queued trial needs.
    """


class StorageUnreachable(Exception):
    """The storage did not answer a call made :func:`without_waiting`."""


def find_outage(error: BaseException | None) -> StorageOutage | None:
    """The StorageOutage behind ``error``, if any: Optuna's trial loop replaces a BaseException raised while it
    tells the storage a trial's state by an UnboundLocalError from its ``finally`` block."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, StorageOutage):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps: Optuna turns driver errors into StorageInternalError) is about the
    connection rather than the data: those are retried."""
    import sqlalchemy.exc as sa

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (sa.IntegrityError, sa.ProgrammingError, sa.DataError, UpdateFinishedTrialError,
                              StorageUnreachable)):
            return False
        if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, ConnectionError,
                              TimeoutError)):
            return True
        if type(error).__module__.startswith(("psycopg", "pymysql")) and \
                type(error).__name__ in ("OperationalError", "InterfaceError"):
            return True
        error = error.__cause__ or error.__context__
    return False


def _say(text: str) -> None:
    print(f"[{socket.gethostname()}:{os.getpid()}] {text}", file=sys.stderr, flush=True)


def _reason(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]


class Outages:
    """The outage state of one storage URL in this process, shared by its storage and its locks."""

    def __init__(self, shown: str, limit_s: float, say: Callable[[str], None] = _say):
        self.shown, self.limit_s, self.say = shown, limit_s, say
        self.down_since: float | None = None
        self.recovered_at: float | None = None
        self.gave_up: StorageOutage | None = None
        self.on_recovered: list[Callable[[], None]] = []
        self.describe_running: Callable[[], str] = lambda: ""
        self._lock = threading.Lock()
        self._local = threading.local()  # .no_wait: this thread's calls try once (without_waiting)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def check(self) -> None:
        if self.gave_up is not None:
            raise self.gave_up

    def failed(self, error: BaseException) -> None:
        """Record a transient failure; raise StorageOutage once the outage has outlasted the limit."""
        now = time.monotonic()
        no_wait = getattr(self._local, "no_wait", False)
        with self._lock:
            if self.gave_up is not None:
                raise self.gave_up
            first = self.down_since is None
            if first:
                self.down_since = now
            elapsed = now - self.down_since
            if elapsed >= self.limit_s and not no_wait:
                running = self.describe_running()
                self.gave_up = StorageOutage(
                    f"storage {self.shown} unreachable for {elapsed:.0f} s, longer than storage_outage_s "
                    f"({self.limit_s:g} s): {_reason(error)}" + (f"; {running}" if running else ""))
                raise self.gave_up
        if first and not no_wait:
            self.say(f"storage {self.shown} unreachable ({_reason(error)}); retrying for up to {self.limit_s:g} s "
                     f"(storage_outage_s)")
        if no_wait:
            raise StorageUnreachable(f"storage {self.shown} unreachable: {_reason(error)}") from error

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            lasted, self.down_since = time.monotonic() - self.down_since, None
            self.recovered_at = time.monotonic()
        self.say(f"storage {self.shown} back after {lasted:.1f} s")
        for hook in self.on_recovered:
            hook()

    def attempt(self, fn: Callable):
        """``fn()`` once: success ends an outage, a transient failure is recorded (and re-raised)."""
        self.check()
        try:
            result = fn()
        except Exception as e:
            if is_transient(e):
                self.failed(e)
            raise
        self.succeeded()
        return result

    def retry(self, fn: Callable, on_retry: Callable[[], object] | None = None):
        """``fn()`` until it succeeds, a real error comes, or the outage outlasts the limit (StorageOutage).
        ``on_retry()``, if given, runs before each retry: a non-None answer is taken as the result."""
        for n in itertools.count():
            try:
                if n and on_retry is not None:
                    found = self.attempt(on_retry)
                    if found is not None:
                        return found
                return self.attempt(fn)
            except Exception as e:
                if not is_transient(e):
                    raise
            delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** n) * random.uniform(0.5, 1.0)
            time.sleep(max(0.05, min(delay, self.remaining())))  # the last try comes at the limit, not after it

    def remaining(self) -> float:
        down_since = self.down_since
        return self.limit_s if down_since is None else self.limit_s - (time.monotonic() - down_since)

    def in_grace(self, grace_s: float) -> bool:
        """Whether the storage came back less than ``grace_s`` seconds ago (or is down now)."""
        return self.down or (self.recovered_at is not None and time.monotonic() - self.recovered_at < grace_s)


_registry: dict[str, Outages] = {}


def configure(url: str, limit_s: float, shown: str) -> Outages:
    """The outage state for ``url`` in this process, with the limit of the study that opened it."""
    outages = _registry.get(url)
    if outages is None:
        outages = _registry[url] = Outages(shown, limit_s)
    outages.limit_s = limit_s
    return outages


def tracker(url: str) -> Outages | None:
    return _registry.get(url)


_storages: weakref.WeakSet = weakref.WeakSet()  # the ResilientStorages of this process


def after_buffered_writes(fn: Callable[[], object]) -> None:
    """``fn()`` now, or, while writes wait for the storage, right after them. For removing a trial's previous
    resume checkpoint: the storage must name the new one first, or a worker that gives up leaves its trial pointing
    at a deleted file (the retry could not resume)."""
    for storage in list(_storages):
        if storage.defer(fn):
            return
    fn()


@contextmanager
def without_waiting(url: str):
    """Storage calls to ``url`` in this block (this thread) try once: a failure on the connection raises
    StorageUnreachable at once and never ends in StorageOutage. For a progress display that can skip a refresh
    (``run --workers``: its workers ride out the outage themselves)."""
    outages = _registry.get(url)
    if outages is None:
        yield
        return
    outages._local.no_wait = True
    try:
        yield
    finally:
        outages._local.no_wait = False


class ResilientStorage(BaseStorage, compat.BaseHeartbeat):
    """An Optuna storage (Optuna's cached RDB storage) whose calls ride out outages as described above.

    Over 120 lines because it is a whole ``BaseStorage``: every method of Optuna's storage interface is forwarded
    here, each with the rule for its kind of call (read, idempotent write, trial creation, heartbeat)."""

    def __init__(self, inner: BaseStorage, outages: Outages, grace_period_s: float | None):
        self._inner, self._outages = inner, outages
        self._grace_s = grace_period_s or 0.0
        self._own: set[int] = set()          # trials this process runs (created or dequeued here, not finished)
        self._last_trials: dict = {}         # (study_id, states) -> the last list read: the stale answer
        self._queue: deque = deque()         # buffered writes: (trial_id, method name, args)
        self._queue_lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._delivered = 0
        self._taken: set[int] = set()        # own trials another worker failed while we could not beat
        self._error: Exception | None = None  # a buffered write's real error, raised in the caller's thread
        outages.on_recovered.append(self._beat_now)
        outages.describe_running = self._describe_running
        _storages.add(self)

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _check(self) -> None:
        self._outages.check()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _call(self, name: str, *args, **kwargs):
        """A call that needs its answer now: buffered writes go first, then the call, retried over an outage."""
        self._check()
        self._drain()
        return self._outages.retry(lambda: getattr(self._inner, name)(*args, **kwargs))

    def _write_later(self, trial_id: int, name: str, *args) -> None:
        """A write of a running trial of ours: done now if the storage answers, else buffered (training goes on)."""
        self._check()
        if trial_id not in self._own:
            self._call(name, trial_id, *args)
            return
        if trial_id in self._taken:
            return
        with self._queue_lock:
            if self._queue or self._outages.down:
                self._queue.append((trial_id, name, args))
                self._start_flusher()
                return
        try:
            self._outages.attempt(lambda: getattr(self._inner, name)(trial_id, *args))
        except Exception as e:
            if not is_transient(e):
                if isinstance(e, UpdateFinishedTrialError):
                    self._taken_over(trial_id)
                    return
                raise
            with self._queue_lock:
                self._queue.append((trial_id, name, args))
                self._start_flusher()

    def defer(self, fn: Callable[[], object]) -> bool:
        """Queue ``fn`` behind the buffered writes, if there are any (see :func:`after_buffered_writes`)."""
        with self._queue_lock:
            if not self._queue:
                return False
            self._queue.append((None, fn, ()))
            return True

    def _start_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_in_background, name="micronet-storage-flusher",
                                             daemon=True)
            self._flusher.start()

    def _flush_in_background(self) -> None:
        try:
            self._drain()
        except StorageOutage:
            pass  # recorded: the main thread raises it at its next storage call
        except Exception as e:  # a real error of a buffered write: the main thread raises it at its next call
            self._error = e

    def _drain(self) -> None:
        """Deliver the buffered writes in order (retrying over the outage)."""
        if not self._queue:
            return
        while True:
            with self._deliver_lock:
                with self._queue_lock:
                    if not self._queue:
                        break
                    trial_id, name, args = self._queue[0]
                if callable(name):
                    try:
                        name()
                    except Exception:
                        pass  # a file already gone: the caller ignored that too
                elif trial_id not in self._taken:
                    try:
                        self._outages.retry(lambda: getattr(self._inner, name)(trial_id, *args))  # noqa: B023
                    except UpdateFinishedTrialError:
                        self._taken_over(trial_id)
                    except Exception:
                        with self._queue_lock:
                            self._queue.popleft()  # a real error: this write is given up, the rest go on
                        raise
                with self._queue_lock:
                    self._queue.popleft()
                    self._delivered += not callable(name)
        with self._queue_lock:
            delivered, self._delivered = self._delivered, 0
        if delivered:
            self._outages.say(f"delivered {delivered} buffered write(s) to storage {self._outages.shown}")

    def _taken_over(self, trial_id: int) -> None:
        if trial_id not in self._taken:
            self._taken.add(trial_id)
            self._outages.say(f"trial id {trial_id} was marked failed by another worker while this one could not "
                              f"reach the storage; its retry runs it again and this run's results are dropped")

    def _beat_now(self) -> None:
        """The storage is back: beat at once, before another worker takes our trials for dead."""
        if self._inner.get_heartbeat_interval() is None:
            return
        for trial_id in list(self._own):
            try:
                self._inner.record_heartbeat(trial_id)
            except Exception:
                pass  # down again: the heartbeat thread tries on

    def _describe_running(self) -> str:
        if not self._own:
            return ""
        if self._inner.get_heartbeat_interval() is None:
            return "its running trial stays RUNNING (heartbeats are off: nothing re-queues it)"
        return "its running trial will be re-queued (by another worker or the next start) from its last checkpoint"

    # -- trials: the writes that are not idempotent -----------------------------------------------------------

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        self._drain()
        token = uuid.uuid4().hex
        if template_trial is None:
            template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                                   datetime_complete=None, params={}, distributions={}, user_attrs={},
                                   system_attrs={CREATE_TOKEN: token}, intermediate_values={}, trial_id=-1)
        else:
            template = copy.deepcopy(template_trial)
            template.system_attrs[CREATE_TOKEN] = token  # replaces the token a retried trial's template carries

        def made() -> list[FrozenTrial]:
            return sorted((t for t in self._inner.get_all_trials(study_id, deepcopy=False)
                           if t.system_attrs.get(CREATE_TOKEN) == token), key=lambda t: compat.trial_id(t))

        def already_made() -> int | None:
            found = made()
            return compat.trial_id(found[0]) if found else None

        trial_id = self._outages.retry(lambda: self._inner.create_new_trial(study_id, template), on_retry=already_made)
        if template.state == TrialState.RUNNING:
            self._own.add(trial_id)
        # Optuna's create_new_trial retries by itself; a lost reply there leaves a copy nobody runs
        copies = self._outages.retry(made)
        kept = next((t.number for t in copies if compat.trial_id(t) == trial_id), None)
        for t in copies:
            if compat.trial_id(t) != trial_id:
                self._outages.retry(lambda t=t: self._fail_copy(compat.trial_id(t), kept))
                self._outages.say(f"trial {t.number}: a copy of trial {kept} made by a retry across a storage "
                                  f"outage; marked failed, it never ran")
        return trial_id

    def _fail_copy(self, trial_id: int, of: int | None) -> None:
        try:
            self._inner.set_trial_user_attr(trial_id, "failed_reason",
                                            f"a copy of trial {of} made by a retry across a storage outage")
            self._inner.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        self._drain()
        failed_once = [False]

        def attempt() -> bool:
            try:
                return self._inner.set_trial_state_values(trial_id, state=state, values=values)
            except Exception as e:
                failed_once[0] = failed_once[0] or is_transient(e)
                raise

        try:
            done = self._outages.retry(attempt)
        except UpdateFinishedTrialError:
            stored = self._outages.retry(lambda: self._inner.get_trial(trial_id))
            if failed_once[0] and stored.state == state:
                done = True  # our own write landed; its reply was lost
            elif trial_id in self._own:
                self._own.discard(trial_id)
                self._taken_over(trial_id)  # raising here would end the worker: Optuna cannot handle it
                return False
            else:
                raise
        if state == TrialState.RUNNING:
            if done:
                self._own.add(trial_id)
            elif failed_once[0] and self._inner.get_heartbeat_interval() is not None:
                # perhaps our lost reply dequeued it: one heartbeat lets it go stale and be re-queued
                self._outages.retry(lambda: self._inner.record_heartbeat(trial_id))
        elif state.is_finished():
            self._own.discard(trial_id)
        return done

    # -- trials: per-epoch writes, buffered over an outage ----------------------------------------------------

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._write_later(trial_id, "set_trial_intermediate_value", step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value) -> None:
        self._write_later(trial_id, "set_trial_user_attr", key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value) -> None:
        self._write_later(trial_id, "set_trial_system_attr", key, value)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution) -> None:
        # Optuna ignores a duplicate parameter row: a retry after a lost reply is harmless
        self._call("set_trial_param", trial_id, param_name, param_value_internal, distribution)

    # -- reads ------------------------------------------------------------------------------------------------

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        key = (study_id, None if states is None else tuple(sorted(states, key=lambda s: s.value)))
        self._check()
        if self._own and (self._queue or self._outages.down) and key in self._last_trials:
            trials = self._last_trials[key]  # training goes on with what was last read (the early stopper's view)
            return copy.deepcopy(trials) if deepcopy else list(trials)
        trials = self._call("get_all_trials", study_id, deepcopy=False, states=states)
        self._last_trials[key] = trials
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trial(self, trial_id: int) -> FrozenTrial:
        trial = self._call("get_trial", trial_id)
        if trial_id in self._own and trial.state.is_finished():
            # another worker failed our live trial (its heartbeat looked stale after an outage). Optuna's tell
            # would raise on a finished trial and end the worker; to it the trial is still running here, and
            # set_trial_state_values drops the result
            self._taken_over(trial_id)
            trial = copy.copy(trial)
            trial.state, trial.datetime_complete = TrialState.RUNNING, None
        return trial

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call("get_trial_id_from_study_id_trial_number", study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call("get_best_trial", study_id)

    # -- studies ----------------------------------------------------------------------------------------------

    def create_new_study(self, directions, study_name: str | None = None) -> int:
        import optuna

        failed_once = [False]

        def attempt() -> int:
            try:
                return self._inner.create_new_study(directions, study_name)
            except Exception as e:
                failed_once[0] = failed_once[0] or is_transient(e)
                raise

        try:
            return self._outages.retry(attempt)
        except optuna.exceptions.DuplicatedStudyError:
            if failed_once[0] and study_name is not None:
                return self.get_study_id_from_name(study_name)  # our own insert; its reply was lost
            raise

    def delete_study(self, study_id: int) -> None:
        self._call("delete_study", study_id)

    def set_study_user_attr(self, study_id: int, key: str, value) -> None:
        self._call("set_study_user_attr", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value) -> None:
        self._call("set_study_system_attr", study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call("get_study_id_from_name", study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call("get_study_name_from_id", study_id)

    def get_study_directions(self, study_id: int):
        return self._call("get_study_directions", study_id)

    def get_study_user_attrs(self, study_id: int) -> dict:
        return self._call("get_study_user_attrs", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict:
        return self._call("get_study_system_attrs", study_id)

    def get_all_studies(self):
        return self._call("get_all_studies")

    def remove_session(self) -> None:
        try:
            self._inner.remove_session()
        except Exception:
            pass  # a session on a dead connection: nothing to keep

    # -- heartbeats -------------------------------------------------------------------------------------------

    def record_heartbeat(self, trial_id: int) -> None:
        """Never raises: a heartbeat missed in an outage is one missed heartbeat, not a reason to stop."""
        if self._outages.gave_up is not None:
            return
        try:
            self._outages.attempt(lambda: self._inner.record_heartbeat(trial_id))
        except (Exception, StorageOutage):
            pass  # a StorageOutage is recorded: the main thread stops at its next call

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self._outages.in_grace(self._grace_s + MAX_DELAY_S):
            return []  # the other workers' heartbeats are as old as the outage: give them time to beat again
        return self._call("_get_stale_trial_ids", study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self._inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self):
        return self._inner.get_heartbeat_stale_trial_callback()
