"""run_all.py's stage commands against the scripts they call: every script exists and
every training stage's flags parse with that stage's own config (a renamed flag fails
here, not 10 minutes into `python run_all.py`); the defaults are what run_all uses, so
run_all passes only paths."""
import os

import common
import dpo
import pretrain
import reward
import run_all
import sft
from tests.conftest import ROOT

CONFIGS = {"pretrain.py": pretrain.PretrainConfig, "sft.py": sft.SFTConfig, "reward.py": reward.RewardConfig,
           "dpo.py": dpo.DPOConfig}
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


def test_tool_stage_in_report_and_summary(tmp_path):
    """The tool stage comes right after SFT and starts from its model; its record becomes
    a REPORT.md section and summary.json's "tools", next to what summary.json held."""
    import json
    names = [s[0] for s in run_all.stages(str(tmp_path))]
    assert names[names.index("sft") + 1] == "tools"
    _, cmd, _ = run_all.tool_stage(str(tmp_path))
    assert cmd[1:4] == ["tools.py", "learn", "--init"] and cmd[4] == os.path.join(str(tmp_path), "sft", "final")
    run_all.write_report(str(tmp_path), {})
    assert "tools" not in json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").write_text('{"other": 1}')
    os.makedirs(tmp_path / "tools")
    record = {"n_eval": 200, "sft_steps": 100, "sft_seconds": 95.0, "with_tool": 0.93, "without_tool": 0.005,
              "with_tool_called_tool": 1.0, "without_tool_called_tool": 0.0,
              "with_tool_transcripts": [{"text": "user> What is 347 * 582?\nipython> 201954", "correct": True}]}
    (tmp_path / "tools" / "report.json").write_text(json.dumps(record))
    run_all.write_report(str(tmp_path), {})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"other": 1, "tools": {"with_tool": 0.93, "without_tool": 0.005}}
    report = (tmp_path / "REPORT.md").read_text()
    section = report[report.index("## tools"):report.index("## reward")]
    assert "| with the tool | 93.0% | 100.0% |" in section and "| without it | 0.5% | 0.0% |" in section
    assert "ipython> 201954" in section and "after 100 steps" in section
