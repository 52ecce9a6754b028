"""A real one-node Slurm cluster for tests: munged, slurmctld and slurmd on this machine, run as root.

`SlurmCluster.start()` writes a private `slurm.conf` (its own ports, state, spool and log directories, so it
never touches a cluster that is already running here, nor another test session's), makes sure munge
works (creating the key and starting `munged` if needed), starts `slurmctld` and `slurmd` in the
foreground as children of this process, and waits until `sinfo` shows the node idle. Clients find
the cluster through `SLURM_CONF` in `cluster.env`; jobs submitted with that environment inherit it
(`--export=ALL`, Slurm's default), so `srun`/`scontrol` inside a job talk to the same cluster.
`stop()` cancels the jobs left and stops slurmctld and slurmd (they also get SIGTERM if this process dies);
munged, shared by every session on the machine, is left running.

No accounting storage is configured, so job states come from `scontrol show job`, which keeps
finished jobs for `MinJobAge` seconds (one hour here).

Needs: Debian's `slurm-wlm` and `munge` (`.ci/run` installs them in CI) and root (SlurmUser=root).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.helpers.wait import wait_until

BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo",
            "scancel")
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE"}
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET_DIR = Path("/run/munge")


class SlurmError(RuntimeError):
    pass


def which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(name, path=path)


def unavailable() -> str | None:
    """Why a test cluster cannot run here (for pytest.skip), or None."""
    missing = [b for b in BINARIES if which(b) is None]
    if missing:
        return (f"Slurm/munge not installed (missing {', '.join(missing)}); "
                "apt-get install slurm-wlm munge (CI does it in .ci/run)")
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root (SlurmUser=root); run the Slurm tests as root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_line(hostname: str) -> str:
    """`NodeName=... CPUs=... RealMemory=...` for this machine: slurmd's own view of it (`slurmd -C`), with a
    little memory held back so the node is never drained for having less than configured."""
    out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, timeout=60).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), None)
    if line is None:  # fall back to the CPU count and /proc/meminfo
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        line = f"NodeName={hostname} CPUs={os.cpu_count()} RealMemory={mem_kib // 1024}"
    fields = dict(f.split("=", 1) for f in line.split())
    fields["NodeName"] = hostname
    fields["NodeAddr"] = "127.0.0.1"  # loopback: the test cluster needs no resolvable hostname
    fields["RealMemory"] = str(max(int(int(fields.get("RealMemory", "1024")) * 0.9), 100))
    return " ".join(f"{k}={v}" for k, v in fields.items()) + " State=UNKNOWN"


def _die_with_parent() -> None:
    """In a daemon's child process before exec: SIGTERM it when this (the test) process dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def parse_job(text: str) -> dict[str, str]:
    """`scontrol show job -o` output -> {field: value} (values may hold spaces, e.g. Command=)."""
    return {m.group(1): m.group(2).strip()
            for m in re.finditer(r"(?:^|\s)([A-Za-z][\w:/]*)=(.*?)(?=\s[A-Za-z][\w:/]*=|$)", text.strip())}


class SlurmCluster:
    partition = "debug"

    def __init__(self, root: Path, *, kill_wait: int = 10):
        self.root = Path(root)
        self.kill_wait = kill_wait
        self.hostname = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.logs = self.root / "log"
        self.name = "t" + uuid.uuid4().hex[:8]
        self._procs: dict[str, subprocess.Popen] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_",
                                                                              "SALLOC_", "SQUEUE_"))}
        self.env["SLURM_CONF"] = str(self.conf)
        self.env["PATH"] = os.pathsep.join([self.env.get("PATH", ""), *SBIN])

    # --- lifecycle -------------------------------------------------------------------------------

    def write_conf(self) -> None:
        for sub in ("etc", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text("\n".join([
            f"ClusterName={self.name}",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "ReturnToService=2",
            "JobRequeue=1",
            "MinJobAge=3600",             # scontrol keeps finished jobs (there is no accounting storage)
            f"KillWait={self.kill_wait}",  # SIGTERM -> SIGKILL on cancel/timeout
            "InactiveLimit=0",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}/slurmd-%n",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logs / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            node_line(self.hostname),
            f"PartitionName={self.partition} Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def munge_works(self) -> bool:
        try:
            cred = subprocess.run([which("munge"), "-n"], capture_output=True, timeout=10)
            if cred.returncode != 0:
                return False
            return subprocess.run([which("unmunge")], input=cred.stdout, capture_output=True,
                                  timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ensure_munge(self) -> None:
        """Use the running munged, or start one (as the munge user) with the system key, creating it if missing."""
        if self.munge_works():
            return
        for d in (MUNGE_KEY.parent, MUNGE_SOCKET_DIR, Path("/var/lib/munge"), Path("/var/log/munge")):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        if not MUNGE_KEY.exists():
            MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
        MUNGE_KEY.parent.chmod(0o700)
        MUNGE_SOCKET_DIR.chmod(0o755)
        proc = subprocess.run([which("runuser"), "-u", "munge", "--", which("munged")], capture_output=True,
                              text=True, timeout=30)
        # another test session may have started it at the same moment (then this start fails): what counts is
        # that munge works. munged is left running: other sessions' clusters on this machine may rely on it.
        try:
            self._poll(self.munge_works, 20, "munge to accept credentials")
        except SlurmError as e:
            raise SlurmError(f"munged failed to start ({proc.returncode}): {proc.stderr.strip()}") from e

    def start(self, timeout: float = 60) -> SlurmCluster:
        self.write_conf()
        self.ensure_munge()
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.logs / f"{daemon}.stdout", "w")  # noqa: SIM115 (closed with the process)
            # -D: stay in the foreground, as our child; -f: this cluster's config
            self._procs[daemon] = subprocess.Popen([which(daemon), "-D", "-f", str(self.conf)], env=self.env,
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                                   preexec_fn=_die_with_parent)
            if daemon == "slurmctld":
                self._poll(lambda: self._cmd("scontrol", "ping", check=False).returncode == 0, timeout,
                           "slurmctld to answer")
        self._poll(lambda: self.node_state() == "idle", timeout, "the node to be idle")
        return self

    def stop(self) -> None:
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self._cmd("scancel", "--partition", self.partition, check=False)
            with contextlib.suppress(SlurmError):
                self._poll(lambda: not self._cmd("squeue", "-h", "-o", "%i", check=False).stdout.strip(),
                           self.kill_wait + 30, "cancelled jobs to end")
        for daemon in ("slurmd", "slurmctld"):
            proc = self._procs.pop(daemon, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- clients ---------------------------------------------------------------------------------

    def _cmd(self, name: str, *args: str, check: bool = True, env: dict | None = None, cwd=None,
             timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([which(name), *map(str, args)], env=env or self.env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise SlurmError(f"{name} {' '.join(map(str, args))} failed ({proc.returncode}): "
                             f"{proc.stderr.strip()}\n{self.daemon_logs()}")
        return proc

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._cmd("scontrol", *args, check=check)

    def scancel(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._cmd("scancel", *args, check=check)

    def submit(self, *args: str, env: dict | None = None, cwd=None) -> int:
        """`sbatch --parsable <args>` (options, the script, its arguments) -> the job id. `env` is added to the
        cluster's client environment; the job gets all of it (Slurm's default --export=ALL)."""
        proc = self._cmd("sbatch", "--parsable", *args, env={**self.env, **(env or {})}, cwd=cwd)
        return int(proc.stdout.strip().split(";")[0])

    def node_state(self) -> str:
        proc = self._cmd("sinfo", "-h", "-N", "-o", "%T", check=False)
        return proc.stdout.strip().rstrip("*~#!%$@^-") if proc.returncode == 0 else ""

    def job(self, job_id: int | str) -> dict[str, str]:
        """The job's fields from `scontrol show job` (JobState, Restarts, ExitCode, StdOut, RunTime, ...)."""
        return parse_job(self.scontrol("show", "job", "-o", str(job_id)).stdout)

    def state(self, job_id: int | str) -> str:
        return self.job(job_id)["JobState"]

    def wait_for(self, job_id: int | str, predicate: Callable[[dict[str, str]], bool], timeout: float,
                 what: str = "the condition") -> dict[str, str]:
        """Poll the job's fields until `predicate` holds on them (and return them); fail if the job ends first."""
        def holds() -> dict[str, str] | None:
            info = self.job(job_id)
            if predicate(info):
                return info
            if info["JobState"] in FINAL_STATES:
                raise SlurmError(f"job {job_id}: ended {info['JobState']} ({info.get('Reason')}) while waiting for "
                                 f"{what}\n{self.describe(job_id, info)}")
            return None

        return wait_until(holds, timeout, interval_s=0.5, what=f"{what} (job {job_id})",
                          detail=lambda: self.describe(job_id))

    def wait(self, job_id: int | str, timeout: float = 300) -> str:
        """Wait until the job ends; its final state (COMPLETED, FAILED, ...). Raises after `timeout` seconds."""
        def ended() -> str | None:
            state = self.state(job_id)
            return state if state in FINAL_STATES else None

        try:
            return wait_until(ended, timeout, interval_s=0.5, what=f"job {job_id} to end",
                              detail=lambda: self.describe(job_id))
        except AssertionError:
            self.scancel(str(job_id), check=False)  # not left running into the next test
            raise

    def release(self, job_id: int | str) -> None:
        """Start a requeued job now (Slurm holds a requeued job back ~2 minutes by its BeginTime).

        Not within the second its last run ended: slurmd revokes the old run's credential with a time in
        whole seconds, and a new credential from that same second is refused ("Killing non-startable batch
        JobId=...: Job credential revoked", and the job fails)."""
        time.sleep(2)
        self.scontrol("update", f"JobId={job_id}", "StartTime=now")

    def stdout(self, job_id: int | str, info: dict[str, str] | None = None) -> str:
        path = Path((info or self.job(job_id)).get("StdOut", ""))
        return path.read_text(errors="replace") if path.is_file() else ""

    def describe(self, job_id: int | str, info: dict[str, str] | None = None, tail: int = 4000) -> str:
        """The job's record, the end of its output and of the daemons' logs: what a failing test shows."""
        info = info or self.job(job_id)
        return (f"{info}\n--- job output (tail) ---\n{self.stdout(job_id, info)[-tail:]}\n"
                f"{self.daemon_logs(tail=1500)}")

    def daemon_logs(self, tail: int = 1500) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.logs / name
            if path.is_file():
                parts.append(f"--- {name} (tail) ---\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def _poll(self, ok: Callable[[], bool], timeout: float, what: str) -> None:
        def holds() -> bool:
            if ok():
                return True
            for daemon, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{daemon} exited ({proc.returncode}) while waiting for {what}\n"
                                     f"{self.daemon_logs()}")
            return False

        try:
            wait_until(holds, timeout, interval_s=0.2, what=what, detail=self.daemon_logs)
        except AssertionError as e:  # the cluster's own waits fail as SlurmError (start() and stop() catch it)
            raise SlurmError(str(e)) from None
