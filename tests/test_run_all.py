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
