"""configs/rm-hh-rlhf.yaml loads and runs (one step, on the hh-rlhf edge-case lines, a tiny Llama)."""

from pathlib import Path

from aha.config import load_config
from aha.models.tiny import TinyModelSpec, create_tiny_model
from aha.train.reward_model import RMRunConfig, run_rm

ROOT = Path(__file__).resolve().parents[1]
EDGE = ROOT / "tests" / "data" / "hh-rlhf" / "helpful-base-edge-cases.jsonl"


def test_config_runs_one_step(tmp_path):
    tiny = create_tiny_model(
        tmp_path / "tiny", TinyModelSpec(hidden_size=32, num_layers=1, intermediate_size=64)
    )
    cfg = load_config(
        RMRunConfig,
        ROOT / "configs" / "rm-hh-rlhf.yaml",
        [
            f"model.path={tiny}",
            f"data.train_file={EDGE}",
            f"data.eval_file={EDGE}",
            "train.steps=1",
            "optim.warmup_steps=0",
            f"run.output_dir={tmp_path / 'run'}",
            "run.progress=false",
        ],
    )
    assert cfg.data.format == "hh-rlhf" and cfg.data.max_length == 128
    result = run_rm(cfg)
    assert result.final_eval["eval/pairs"] == 4  # 8 lines: 2 identical and 2 prompt-mismatch dropped
    assert (result.final_dir / "reward_model.json").is_file()
