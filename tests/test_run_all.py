"""run_all.py's stage commands against the scripts they call: every script exists and
every training stage's flags parse with that stage's own config (a renamed flag fails
here, not 10 minutes into `python run_all.py`); the defaults are what run_all uses, so
run_all passes only paths."""
import json
import os

import common
import dpo
import longcontext
import pretrain
import reward
import run_all
import sft
from tests.conftest import ROOT

CONFIGS = {"pretrain.py": pretrain.PretrainConfig, "sft.py": sft.SFTConfig, "reward.py": reward.RewardConfig,
           "dpo.py": dpo.DPOConfig,
           "longcontext.py": longcontext.LongContextConfig}
PATH_FLAGS = {"--data", "--out", "--init", "--tokenizer", "--reward", "--ckpt"}


def test_stage_commands_parse_and_pass_only_paths():
    for name, cmd, _ in run_all.stages("out"):
        script = next(a for a in cmd if a.endswith(".py"))
        assert os.path.exists(os.path.join(ROOT, script)), (name, script)
        argv = cmd[cmd.index(script) + 1:]
        if script in CONFIGS:
            common.config_parser(CONFIGS[script]).parse_args(argv)  # exits 2 on an unknown flag
            flags = [a for a in argv if a.startswith("--")]
            assert set(flags) <= PATH_FLAGS, (name, flags)  # tuning lives in the stage's defaults


def test_summary_json_holds_the_long_context_stage(tmp_path):
    """summary.json: needle accuracy per length before/after, the pre-trained model's bits per byte."""
    os.makedirs(tmp_path / "longctx")
    report = {"before": {"niah": {"256": 0.1, "1024": 0.0}, "short_loss": 6.1, "bits_per_byte": 2.4},
              "after": {"niah": {"256": 0.9, "1024": 0.8}, "short_loss": 6.2, "bits_per_byte": 2.45}}
    (tmp_path / "longctx" / "report.json").write_text(json.dumps(report))
    (tmp_path / "summary.json").write_text(json.dumps({"other": 1}))  # other stages' keys stay
    run_all.write_report(str(tmp_path), {})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["niah"] == {"before": {"256": 0.1, "1024": 0.0}, "after": {"256": 0.9, "1024": 0.8}}
    assert summary["pretrain"] == {"bits_per_byte": 2.4} and summary["other"] == 1
    assert "before.niah.1024" in (tmp_path / "REPORT.md").read_text()
