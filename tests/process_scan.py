"""Helpers for tests that run train_net.py in child processes and check nothing is left behind.

Every process of a run inherits the marker ``ESCNET_TEST_MARKER=<token>`` from its environment;
``processes_with_marker`` scans ``/proc`` (through psutil) for it.
"""
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil

from conftest import REPO

MARKER = "ESCNET_TEST_MARKER"
FAULT_SCRIPT = os.path.join(REPO, "tests", "fault_injection_train_net.py")
# Seconds processes of a finished run may take to disappear (the resource tracker notices the
# launcher's exit by reading EOF).
VANISH_TIMEOUT_S = 10.0


def new_marker():
    return uuid.uuid4().hex


def run_env(marker, **extra):
    """Environment of a child run: the marker, the repo on PYTHONPATH, unbuffered output."""
    # One compute thread per process: the ranks share 2 cores (OpenMP spinning otherwise stalls them).
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO, OMP_NUM_THREADS="1", **{MARKER: marker})
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Run:
    """``python <args>`` started in the repo with the marker; stdout/stderr go to files in
    ``log_dir`` (a pipe nobody reads would fill up and stall the run)."""

    def __init__(self, args, marker, log_dir, **env):
        os.makedirs(log_dir, exist_ok=True)
        self.stdout_path = os.path.join(log_dir, "stdout.txt")
        self.stderr_path = os.path.join(log_dir, "stderr.txt")
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=run_env(marker, **env),
                                            stdout=out, stderr=err)

    def poll(self):
        return self.process.poll()

    @property
    def returncode(self):
        return self.process.returncode

    def wait(self, timeout):
        """Wait for the end (killing the run after ``timeout`` s); return its stderr."""
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return self.stderr()

    def stderr(self):
        with open(self.stderr_path) as f:
            return f.read()


def start(args, marker, log_dir, **env):
    """Start a ``Run``."""
    return Run(args, marker, log_dir, **env)


def processes_with_marker(marker):
    """Live processes (not zombies) whose environment carries ``marker``."""
    wanted = f"{MARKER}={marker}".encode()
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if wanted not in f.read().split(b"\0"):
                    continue
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except (OSError, psutil.Error):
            continue
    return found


def assert_no_process_left(marker):
    """Wait up to ``VANISH_TIMEOUT_S`` for the run's processes to end; kill and fail if any stay."""
    deadline = time.monotonic() + VANISH_TIMEOUT_S
    left = processes_with_marker(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_with_marker(marker)
    described = []
    for pid in left:
        try:
            described.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:200]}")
            os.kill(pid, signal.SIGKILL)
        except (OSError, psutil.Error):
            pass
    assert not left, f"processes of the run left behind: {described}"


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]
