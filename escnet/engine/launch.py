"""Launching multi-process runs that end quickly and cleanly when any process fails.

``launch`` replaces Detectron2's ``launch`` (same arguments). With more than one process per
machine it starts each rank with ``multiprocessing`` spawn and supervises them:

* every rank runs in its own process group and dies with the launcher (Linux
  ``PR_SET_PDEATHSIG``); its DataLoader workers die with the rank (``ParentWatchingWorkerInit``);
* a rank reports how it ended through a pipe: a user error (``EscnetError``) as its one-line
  message, any other exception with its traceback;
* each rank beats a heartbeat every ``heartbeat_timeout / 10`` seconds from a thread; a rank
  whose heartbeat is ``heartbeat_timeout`` seconds old (frozen, stopped) fails the run. A rank
  that is alive but stuck (waiting in a collective for a peer that never comes) fails when the
  collective's ``timeout`` expires: a failure is noticed within the smaller of the two bounds;
* on the first failure the launcher waits ``FAILURE_GRACE_S`` for the other ranks' reports
  (a rank's death reaches its peers as a communication error: the original failure is the one
  reported), kills every rank's process group with SIGKILL, prints the failure once as
  ``error: ...`` (plus the rank's traceback for a bug) and exits non-zero: 2 for a user error
  (as a single-process run), 1 otherwise, 130/143 when the launcher is interrupted.
"""
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta

import torch.distributed as dist
from detectron2.engine.launch import _distributed_worker, _find_free_port

from ..utils.errors import EscnetError, one_line_message, unwrap_cli_entry
from ..utils.process import die_with_parent

# Seconds the launcher waits after the first failure for the other ranks to report theirs.
FAILURE_GRACE_S = 1.0
# Heartbeats per heartbeat timeout (a rank beats every timeout / HEARTBEATS_PER_TIMEOUT s).
HEARTBEATS_PER_TIMEOUT = 10
# Seconds between the launcher's checks of heartbeats when nothing else happens.
SUPERVISOR_POLL_S = 0.5
# Exit statuses: a user error (as cli_entry), any other failure.
USER_ERROR_STATUS = 2
FAILURE_STATUS = 1

# Report kinds, in the order of precedence used to pick the failure to print.
USER_ERROR, EXCEPTION, DIED, STOPPED_ANSWERING, COMMUNICATION, OK = range(6)
_COMMUNICATION_TYPES = ("DistBackendError", "DistNetworkError", "DistStoreError")
_COMMUNICATION_PHRASES = ("connection closed by peer", "connection reset by peer", "gloo", "nccl", "broken pipe")


def _is_communication_error(err):
    """True for errors a rank gets because a peer died (the consequence, not the cause)."""
    if type(err).__name__ in _COMMUNICATION_TYPES:
        return True
    text = str(err).lower()
    return isinstance(err, (RuntimeError, ConnectionError)) and any(p in text for p in _COMMUNICATION_PHRASES)


def _describe(err):
    """``(kind, one-line message, traceback text)`` of an exception that ended a rank."""
    if isinstance(err, SystemExit):
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        return (OK if code == 0 else EXCEPTION), f"exited with status {code}", ""
    if isinstance(err, (EscnetError, FileNotFoundError)):
        return USER_ERROR, one_line_message(err), ""
    message = f"{type(err).__name__}: {one_line_message(err)}"
    if "DataLoader worker" in str(err).split("\n", 1)[0]:
        message = f"{type(err).__name__} in a DataLoader worker: {one_line_message(err)}"
    kind = COMMUNICATION if _is_communication_error(err) else EXCEPTION
    return kind, message, "".join(traceback.format_exception(err))


def _beat(beats, index, interval):
    while True:
        beats[index] = time.monotonic()
        time.sleep(interval)


def _rank_entry(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout,
                report, beats, launcher_pid, heartbeat_interval):
    """Body of one spawned rank: guard, heartbeat, run ``main_func``, report how it ended."""
    die_with_parent(launcher_pid)
    os.setpgid(0, 0)  # own process group: killing it also kills this rank's DataLoader workers
    if heartbeat_interval > 0:
        threading.Thread(target=_beat, args=(beats, local_rank, heartbeat_interval), daemon=True,
                         name="heartbeat").start()
    try:
        _distributed_worker(local_rank, unwrap_cli_entry(main_func), world_size, num_per_machine, machine_rank,
                            dist_url, args, timeout)
        outcome = (OK, "", "")
    except BaseException as err:  # noqa: B902  (every ending is reported to the launcher)
        outcome = _describe(err)
    _send(report, outcome)
    if outcome[0] == OK:
        if dist.is_initialized():
            dist.destroy_process_group()
        return  # a normal exit: multiprocessing cleans up this rank's DataLoader queues
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a rank whose peer died can hang in process-group destructors.
    os._exit(USER_ERROR_STATUS if outcome[0] == USER_ERROR else FAILURE_STATUS)


def _send(report, outcome):
    try:
        report.send(outcome)
        report.close()
    except OSError:  # the launcher is gone; this process is about to end anyway
        pass


def _start_quiet_resource_tracker():
    """Start multiprocessing's resource tracker without its "leaked semaphore" warnings.

    A rank that fails ends without running its finalizers, so the tracker unlinks that rank's
    DataLoader semaphores itself; its warning about doing so would only add noise to the one
    error line the launcher prints.
    """
    from multiprocessing import resource_tracker

    previous = os.environ.get("PYTHONWARNINGS")
    quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
    os.environ["PYTHONWARNINGS"] = f"{previous},{quiet}" if previous else quiet
    try:
        resource_tracker.ensure_running()
    finally:
        if previous is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = previous


class _Rank:
    def __init__(self, index, process, reader):
        self.index = index  # local rank
        self.process = process
        self.reader = reader
        self.report = None
        self.exitcode = None
        self.killed_by_launcher = False


def _kill_group(rank):
    """SIGKILL the rank's process group (rank and DataLoader workers), or the rank alone."""
    pid = rank.process.pid
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
            return
        except (ProcessLookupError, PermissionError):
            continue


def _signal_name(code):
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class _Interrupted(Exception):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise _Interrupted(signum)


class _Supervisor:
    """Start the ranks of this machine, watch them, end them all on the first failure."""

    def __init__(self, num_per_machine, global_rank_offset, heartbeat_timeout):
        self.num = num_per_machine
        self.offset = global_rank_offset
        self.heartbeat_timeout = heartbeat_timeout
        self.context = multiprocessing.get_context("spawn")
        self.beats = self.context.Array("d", num_per_machine, lock=False)
        self.ranks = []

    def start(self, target_args):
        _start_quiet_resource_tracker()
        interval = self.heartbeat_timeout / HEARTBEATS_PER_TIMEOUT if self.heartbeat_timeout > 0 else 0
        for local_rank in range(self.num):
            reader, writer = self.context.Pipe(duplex=False)
            process = self.context.Process(
                target=_rank_entry,
                args=(local_rank, *target_args, writer, self.beats, os.getpid(), interval),
                daemon=False,
                name=f"escnet-rank{self.offset + local_rank}",
            )
            process.start()
            writer.close()
            self.ranks.append(_Rank(local_rank, process, reader))

    def _read_reports(self, timeout):
        """Wait up to ``timeout`` s for a report or an exit; record what arrived."""
        waitables = [r.reader for r in self.ranks if r.reader is not None]
        waitables += [r.process.sentinel for r in self.ranks if r.exitcode is None]
        if not waitables:
            return
        ready = multiprocessing.connection.wait(waitables, timeout=timeout)
        for rank in self.ranks:
            if rank.reader is not None and rank.reader in ready:
                try:
                    rank.report = rank.reader.recv()
                except (EOFError, OSError):
                    rank.reader.close()
                    rank.reader = None
            if rank.exitcode is None and rank.process.sentinel in ready:
                rank.process.join()
                rank.exitcode = rank.process.exitcode

    def _failure_of(self, rank, now):
        """``(kind, message, traceback)`` if ``rank`` failed, else None."""
        if rank.report is not None and rank.report[0] != OK:
            return rank.report
        if rank.exitcode is not None and rank.exitcode != 0 and not rank.killed_by_launcher:
            if rank.report is None and rank.exitcode < 0:
                return DIED, f"was killed by {_signal_name(rank.exitcode)}", ""
            if rank.report is None:
                return DIED, f"exited with status {rank.exitcode} without a report", ""
        if (
            self.heartbeat_timeout > 0
            and rank.exitcode is None
            and self.beats[rank.index] > 0
            and now - self.beats[rank.index] > self.heartbeat_timeout
        ):
            return STOPPED_ANSWERING, (
                f"stopped answering: no heartbeat for {now - self.beats[rank.index]:.0f} s "
                f"(LAUNCH.HEARTBEAT_TIMEOUT {self.heartbeat_timeout:g})"
            ), ""
        return None

    def _failures(self):
        now = time.monotonic()
        found = []
        for rank in self.ranks:
            failure = self._failure_of(rank, now)
            if failure is not None:
                found.append((failure[0], rank.index, failure))
        return found

    def supervise(self):
        """Block until all ranks succeeded (return None) or one failed (return its report)."""
        while True:
            self._read_reports(SUPERVISOR_POLL_S)
            if self._failures():
                break
            if all(r.exitcode is not None for r in self.ranks):
                return None
        # Let the other ranks report their own endings before choosing which failure to print.
        deadline = time.monotonic() + FAILURE_GRACE_S
        while time.monotonic() < deadline and any(r.exitcode is None for r in self.ranks):
            self._read_reports(max(deadline - time.monotonic(), 0))
        failures = self._failures()
        self.kill_all()
        return min(failures, key=lambda item: (item[0], item[1]))

    def kill_all(self):
        """SIGKILL every rank's process group (also after success: no worker stays behind)."""
        for rank in self.ranks:
            if rank.exitcode is None and rank.process.is_alive():
                rank.killed_by_launcher = True
            _kill_group(rank)
        for rank in self.ranks:
            rank.process.join()
            if rank.exitcode is None:
                rank.exitcode = rank.process.exitcode
            if rank.reader is not None:
                rank.reader.close()
                rank.reader = None


def _print_failure(global_rank, failure):
    kind, message, trace = failure
    if kind == USER_ERROR:
        print(f"error: {message}", file=sys.stderr, flush=True)
        return USER_ERROR_STATUS
    if trace:
        print(trace.rstrip(), file=sys.stderr)
    print(f"error: rank {global_rank} {message}" if kind in (DIED, STOPPED_ANSWERING) else
          f"error: rank {global_rank} failed: {message}", file=sys.stderr, flush=True)
    return FAILURE_STATUS


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=timedelta(minutes=30), heartbeat_timeout=0.0):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes (or in this one if the world is 1).

    Arguments as Detectron2's ``launch``; ``timeout`` bounds every collective (``timedelta`` or
    seconds), ``heartbeat_timeout`` (seconds, 0: off) bounds how long a rank may stop answering.
    Returns when every rank succeeded; otherwise prints the first failure once and exits the
    program (status 2 for a user error, else 1), leaving no process of the run behind.
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if not isinstance(timeout, timedelta):
        timeout = timedelta(seconds=float(timeout))
    if dist_url == "auto":
        if num_machines != 1:
            raise EscnetError("--dist-url auto works on one machine only: give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    supervisor = _Supervisor(num_gpus_per_machine, machine_rank * num_gpus_per_machine, heartbeat_timeout)
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start((main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout))
        failed = supervisor.supervise()
    except _Interrupted as interrupt:
        supervisor.kill_all()
        print(f"error: interrupted by {signal.Signals(interrupt.signum).name}; all processes stopped",
              file=sys.stderr, flush=True)
        sys.exit(128 + interrupt.signum)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    supervisor.kill_all()
    if failed is not None:
        _, local_rank, failure = failed
        sys.exit(_print_failure(supervisor.offset + local_rank, failure))
