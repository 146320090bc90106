"""scripts/slurm/pretrain.sbatch on a real Slurm: 2 CPU ranks under DDP, preempted with SIGUSR1, requeued, resumed.

The job is the template with its #SBATCH lines adapted to CPUs (2 tasks on 1 node, no GPUs); its body (config
composition, ``srun brainfm fit``, ``num_nodes``/``devices`` from the allocation) runs unchanged.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, REPO

pytestmark = pytest.mark.slurm

TEMPLATE = REPO / "scripts/slurm/pretrain.sbatch"
MAX_STEPS = 20
SIGNAL_AFTER_STEP = 4  # preempt once this many optimizer steps are logged
TRAIN_SESSIONS = 4  # 6 demo subjects, val_fraction 0.3 -> 2 held out; 2 per rank, so the shares can be disjoint


def cpu_adaptation(template: str, output: Path) -> str:
    """The template with its resource lines for 2 CPU tasks on one node; fails if a line to adapt is gone."""
    replacements = {
        r"#SBATCH --job-name=.*": "#SBATCH --job-name=brainfm-slurm-test",
        r"#SBATCH --ntasks-per-node=.*": "#SBATCH --ntasks-per-node=2",
        r"#SBATCH --gres=gpu:.*\n": "",
        r"#SBATCH --cpus-per-task=.*": "#SBATCH --cpus-per-task=1",
        r"#SBATCH --time=.*": "#SBATCH --time=00:10:00",
        r"#SBATCH --output=.*": f"#SBATCH --output={output}",
    }
    for pattern, replacement in replacements.items():
        template, count = re.subn(pattern, replacement, template)
        assert count == 1, f"{TEMPLATE} has no line matching {pattern!r}"
    return template


def read_records(probe_dir: Path) -> list[dict]:
    paths = sorted(probe_dir.glob("rank*.jsonl"))
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def test_template_requests_requeue_on_sigusr1():
    text = TEMPLATE.read_text()
    for line in ("#SBATCH --signal=SIGUSR1@90", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --nodes=", "#SBATCH --ntasks-per-node=", "#SBATCH --gres=gpu:", "#SBATCH --cpus-per-task="):
        assert line in text
    assert re.search(r'srun "\$BRAINFM" fit .*--trainer.num_nodes "\$SLURM_NNODES" '
                     r'--trainer.devices "\$SLURM_NTASKS_PER_NODE"', text.replace("\\\n", " ").replace("  ", " "))


def test_preempted_ddp_job_requeues_resumes_and_finishes_at_max_steps(slurm_cluster, demo_root, tmp_path):
    out, probe_dir, run_dir = tmp_path / "job.out", tmp_path / "probe", tmp_path / "run"
    script = tmp_path / "pretrain_cpu.sbatch"
    script.write_text(cpu_adaptation(TEMPLATE.read_text(), out))
    configs = [CONFIGS / "pretrain/quickstart.yaml", CONFIGS / "model/test.yaml", CONFIGS / "trainer/slurm.yaml"]
    venv_bin = Path(sys.executable).parent
    wait_for = slurm_cluster.wait_for
    slurm_cluster.env |= {
        "CONFIG": " ".join(map(str, configs)),
        "BRAINFM": str(venv_bin / "brainfm"),
        "PATH": f"{venv_bin}:{slurm_cluster.env['PATH']}",
        "PYTHONPATH": str(Path(__file__).parent),  # rank_probe.RankProbe
    }
    probe = json.dumps({"class_path": "rank_probe.RankProbe", "init_args": {"out_dir": str(probe_dir)}})
    # step checkpoints as in configs/pretrain/fomo25_base.yaml (no monitor, so written whatever the val loss does)
    every_steps = json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
        "dirpath": str(tmp_path / "steps"), "every_n_train_steps": 10, "save_top_k": -1,
        "filename": "step{step:07d}", "auto_insert_metric_name": False}})
    fit_args = [
        "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.precision", "32-true",
        "--trainer.max_epochs", "-1", "--trainer.max_steps", str(MAX_STEPS), "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
        "--data.root", str(demo_root), "--data.n_subjects", "6", "--data.demo_spacing", "4.0",
        "--data.num_workers", "0", "--data.batch_size", "1", "--data.val_fraction", "0.3",
        f"--trainer.callbacks+={probe}", f"--trainer.callbacks+={every_steps}",
    ]
    job_id = slurm_cluster.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script), *fit_args).stdout.strip()
    output = lambda: out.read_text(errors="replace") if out.exists() else ""  # noqa: E731
    diagnose = lambda: f"job output:\n{output()[-6000:]}\n{slurm_cluster.logs()}"  # noqa: E731

    def steps_logged() -> int:
        return sum(r["event"] == "step" and r["rank"] == 0 for r in read_records(probe_dir))

    try:
        wait_for(lambda: steps_logged() >= SIGNAL_AFTER_STEP, 150, f"{SIGNAL_AFTER_STEP} training steps")
        slurm_cluster.run("scancel", "--signal=USR1", job_id)  # to the srun tasks, as --signal=SIGUSR1@90 does
        wait_for(lambda: "Handling auto-requeue signal" in output() and list(run_dir.glob("hpc_ckpt_*.ckpt")),
                 60, "Lightning to handle the signal and write hpc_ckpt")
        # a loaded machine can take long to clean up the step, and the requeued job may already be running again
        wait_for(lambda: slurm_cluster.job_fields(job_id).get("Restarts") == "1"
                 and slurm_cluster.job_fields(job_id).get("JobState") in ("PENDING", "RUNNING", "COMPLETED"),
                 180, "the job to be requeued")
        if slurm_cluster.job_fields(job_id).get("JobState") == "PENDING":  # held by BeginTime for ~2 minutes
            slurm_cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
        wait_for(lambda: slurm_cluster.job_fields(job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
                 180, "the requeued job to finish")
    except TimeoutError as error:
        pytest.fail(f"{error}\n{diagnose()}")
    fields = slurm_cluster.job_fields(job_id)
    text = output()
    print(f"job {job_id}: {fields.get('JobState')} restarts={fields.get('Restarts')}\n{text}")
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", diagnose()

    # the requeue: the SlurmRequeue callback, an hpc checkpoint, Slurm's restart count, and the restore from it
    (hpc_ckpt,) = run_dir.glob("hpc_ckpt_*.ckpt")
    assert hpc_ckpt.name == "hpc_ckpt_1.ckpt"
    preempted_at = torch.load(hpc_ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert f"Handling auto-requeue signal 10 at global step {preempted_at}: saving {hpc_ckpt}" in text
    assert f"Requeued SLURM job: {job_id}" in text
    assert f"Restored all states from the checkpoint at {hpc_ckpt}" in text
    assert fields["Restarts"] == "1"
    assert SIGNAL_AFTER_STEP <= preempted_at < MAX_STEPS
    print(f"job {job_id}: preempted at global step {preempted_at}, requeued, finished at {MAX_STEPS}")

    records = read_records(probe_dir)
    starts = [r for r in records if r["event"] == "train_start"]
    # both ranks ran with world size 2 before and after the requeue, under SLURMEnvironment
    assert sorted((r["restart"], r["rank"], r["slurm_procid"]) for r in starts) == [
        (0, 0, "0"), (0, 1, "1"), (1, 0, "0"), (1, 1, "1")]
    assert all(r["world_size"] == r["dist_world_size"] == 2 and r["environment"] == "SLURMEnvironment"
               for r in starts)
    resumed = [r for r in starts if r["restart"] == 1]
    assert all(r["global_step"] == preempted_at and r["ckpt_path"] == str(hpc_ckpt) for r in resumed)

    # in every epoch the two ranks read disjoint halves of the training sessions
    steps = [r for r in records if r["event"] == "step"]
    by_epoch: dict[tuple[int, int], dict[int, set[str]]] = {}
    for r in steps:
        by_epoch.setdefault((r["restart"], r["epoch"]), {}).setdefault(r["rank"], set()).update(r["sessions"])
    complete = [shares for shares in by_epoch.values() if len(shares) == 2
                and sum(map(len, shares.values())) == TRAIN_SESSIONS]
    assert len(complete) >= 3, by_epoch
    for shares in by_epoch.values():
        assert not shares.get(0, set()) & shares.get(1, set()), shares

    # the resumed run continues from the checkpoint's step and stops where an uninterrupted run would have
    after = sorted(r["global_step"] for r in steps if r["restart"] == 1 and r["rank"] == 0)
    assert after == list(range(preempted_at + 1, MAX_STEPS + 1))
    # the preempted job may or may not reach its own train end before Slurm stops it for the requeue
    ends = [r for r in records if r["event"] == "train_end" and r["restart"] == 1]
    assert sorted((r["rank"], r["global_step"]) for r in ends) == [(0, MAX_STEPS), (1, MAX_STEPS)]
    # the restarted job logged to the first one's version (the job id), so its checkpoint folder carried over
    assert sorted(p.name for p in (run_dir / "lightning_logs").iterdir()) == [f"version_{job_id}"]
    # the step checkpoints of the resumed run, the last one at MAX_STEPS
    saved = {p.name: torch.load(p, map_location="cpu", weights_only=False)["global_step"]
             for p in (tmp_path / "steps").glob("*.ckpt")}
    expected = {f"step{s:07d}.ckpt": s for s in range(10, MAX_STEPS + 1, 10)}
    # a step checkpoint due at the very step of the preemption may be cut off by the requeue (the job is stopped
    # right after hpc_ckpt is written); hpc_ckpt holds that state, and the resumed run starts after it
    if f"step{preempted_at:07d}.ckpt" not in saved:
        expected.pop(f"step{preempted_at:07d}.ckpt", None)
    assert saved == expected
