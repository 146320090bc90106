"""A real single-node Slurm for the tests: munged, slurmctld and slurmd from Debian's slurm-wlm, in a temp folder.

Everything lives under one temp folder (config, state, spool, logs, munge socket and key), on free ports, so the
cluster touches nothing in /etc and can run next to another one. Every daemon runs in the foreground as a child
of this process and is stopped by its PID when the tests of the module end, also when they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue", "scancel")
NODE = "localhost"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: runs a real single-node Slurm cluster (root; installs slurm-wlm)")


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> object:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def missing_slurm_reason() -> str | None:
    """Install slurm-wlm and munge if needed; returns why the cluster cannot run, or ``None``."""
    if os.geteuid() != 0:
        return "the Slurm tests need root (slurmd runs jobs as root here)"
    if all(shutil.which(p, path=SBIN_PATH) for p in PROGRAMS):
        return None
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{' '.join(command)} failed: {error}"
        if result.returncode != 0:
            return f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-500:]}"
    missing = [p for p in PROGRAMS if not shutil.which(p, path=SBIN_PATH)]
    return f"still missing after apt-get install: {missing}" if missing else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalSlurm:
    """One node (``localhost``, all its CPUs) and one partition, in ``root``.

    Args:
        root: Empty folder for config, state, logs and the munge socket.
    """

    wait_for = staticmethod(wait_for)  # for the tests, which cannot import this conftest

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = os.environ | {"SLURM_CONF": str(self.conf), "PATH": SBIN_PATH}  # of every client and daemon
        self.daemons: dict[str, subprocess.Popen] = {}

    def write_config(self) -> None:
        for folder in ("state", "spool", "log", "munge"):
            (self.root / folder).mkdir(mode=0o700, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        cpus = os.cpu_count() or 1
        self.conf.write_text("\n".join([
            "ClusterName=brainfmtest",
            f"SlurmctldHost={NODE}",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'log' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'log' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobRequeue=1",
            "KillWait=5",  # seconds between SIGTERM and SIGKILL when a job is requeued or cancelled
            "MailProg=/bin/true",
            f"NodeName={NODE} CPUs={cpus} RealMemory=1000 State=UNKNOWN",
            f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")

    def _start(self, name: str, *command: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
        self.daemons[name] = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True)

    def _check_alive(self) -> None:
        for name, process in self.daemons.items():
            if process.poll() is not None:
                log = (self.root / "log" / f"{name}.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{log}")

    def start(self) -> None:
        self.write_config()
        munge_dir = self.root / "munge"
        self._start("munged", "munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                    f"--key-file={munge_dir / 'munge.key'}", f"--pid-file={munge_dir / 'munged.pid'}",
                    f"--log-file={munge_dir / 'munged.log'}", f"--seed-file={munge_dir / 'munged.seed'}")
        wait_for(lambda: self._check_alive() or self.munge_socket.exists(), 20, "the munge socket")
        credential = self.run("munge", "-n", "-S", str(self.munge_socket)).stdout
        subprocess.run(["unmunge", "-S", str(self.munge_socket)], input=credential, env=self.env, check=True,
                       capture_output=True, text=True, timeout=10)
        self._start("slurmctld", "slurmctld", "-D", "-i")
        self._start("slurmd", "slurmd", "-D", "-N", NODE)
        wait_for(lambda: self._check_alive() or self.node_state() == "idle", 60, f"sinfo to show {NODE} idle")

    def run(self, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A client command (sbatch, scontrol, ...) against this cluster."""
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).stdout.strip()

    def job_fields(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Reason, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def logs(self) -> str:
        """The daemons' logs, for failure messages."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.root / "log").glob("*.log")))

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged by PID (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.run("scancel", "--user", "root", check=False)
            try:
                wait_for(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), 30, "jobs to end")
            except TimeoutError:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.daemons.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory, request) -> LocalSlurm:
    """A running single-node cluster.

    As root (``make test`` in CI) the tests fail, saying why, when Slurm cannot be installed or started: they never
    skip silently where they can run. Without root they are skipped with the reason.
    """
    reason = missing_slurm_reason()
    if reason and os.geteuid() == 0:
        pytest.fail(f"the Slurm test cluster cannot run here: {reason}")
    if reason:
        print(f"skipping the Slurm tests: {reason}")
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(cluster.stop)  # before start(): daemons that did start are stopped if a later one fails
    cluster.start()
    return cluster
