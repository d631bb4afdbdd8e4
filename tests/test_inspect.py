"""`python -m lmmixup.inspect` on real train.py runs: one 2x2 smoke multirun (4 jobs of 2 steps,
a real subprocess), then the terminal report, PNGs (decoded), the HTML's structure (parsed, no
browser), the dumps the trainer wrote, and --sweep's cells."""

import base64
import io
import json
import subprocess
import sys
from html.parser import HTMLParser

import matplotlib.image as mpimg
import pytest

from conftest import ROOT
from lmmixup.dumps import list_dumps, read_dump
from lmmixup.inspect.__main__ import main
from lmmixup.inspect.sweep import load_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "experiment=smoke", "steps=2",
         "checkpoint.every=0", "algo.beta=0", "rollout.max_new_tokens=8",
         "logger.progress_bar=false", "reward.weights.tags=0.3,0.7",
         "reward.weights.length=0.3,0.7", f"hydra.sweep.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_trainer_logs_attribution_hacking_and_dumps(sweep_dir):
    run = sweep_dir / "0"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["attr/split_error"] <= 1e-6  # sum_k A_ik == the advantages the update used
        shares = [row[f"attr/{k}_abs_share"] for k in ("tags", "length")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-9)
        assert {f"hacking/{r}" for r in ("saturation", "length_drift", "entropy_collapse",
                                         "kl_outpaces_reward", "heldout_divergence")} <= set(row)
        assert row["time/dump_s"] > 0  # auto schedule: every step of a short run
    assert json.loads((run / "hacking.json").read_text())["last_step"] == 2
    dumps = list_dumps(run)
    assert sorted(dumps) == [1, 2]
    dump = read_dump(dumps[2])
    assert len(dump) == 2 * 4  # prompts_per_step x group_size
    for r in dump:
        assert r["advantage"] == pytest.approx(r["adv_tags"] + r["adv_length"], abs=1e-6)
        assert r["reward_total"] == pytest.approx(0.3 * r["reward_tags"] + 0.3 * r["reward_length"],
                                                  abs=1e-6)
        assert r["logprob_mean"] < 0 and r["kl"] is None  # beta = 0: no reference, no KL


class Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.details, self.links = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "img":
            self.images.append(a["src"])
        if tag == "details":
            self.details += 1
        for key in ("src", "href"):
            if key in a and not a[key].startswith("data:"):
                self.links.append(a[key])
        if tag in ("script", "link"):
            self.links.append(tag)


def test_inspect_writes_report_plots_and_html(sweep_dir, capsys):
    run = sweep_dir / "0"
    main([str(run), "--plot", "--html", "--compare", str(sweep_dir / "3")])
    out = capsys.readouterr().out
    for heading in ("advantage attribution", "reward-hacking signals", "widest advantage spread",
                    "runs compared"):
        assert heading in out
    pngs = sorted((run / "inspect").glob("inspect_*.png"))
    assert [p.name for p in pngs] == sorted(f"inspect_{n}.png" for n in (
        "rewards", "kl", "entropy", "length", "clip", "attribution", "overview"))
    for p in pngs:
        image = mpimg.imread(p)  # decodes the PNG
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0  # not a blank canvas
    parser = Sections()
    parser.feed((run / "inspect" / "report.html").read_text())
    assert parser.sections == ["config", "plots", "attribution", "hacking", "rollouts"]
    assert parser.links == []  # self-contained: no external file, script or stylesheet
    assert len(parser.images) == 6
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png").size
    # rollout browser: 2 dumped steps, each with 2 groups, each with its prompt fold
    assert parser.details == 2 + 2 * (2 + 2)


def test_sweep_gives_four_cells(sweep_dir, capsys):
    main(["--sweep", str(sweep_dir)])
    assert "4 cells" in capsys.readouterr().out
    cells = load_sweep(sweep_dir)
    assert len(cells) == 4
    assert sorted((c.values["reward.weights.tags"], c.values["reward.weights.length"])
                  for c in cells) == [("0.3", "0.3"), ("0.3", "0.7"), ("0.7", "0.3"), ("0.7", "0.7")]
    for c in cells:  # Hydra's job order matches each job's own config
        weights = json.dumps(c.values)
        assert f"tags: {c.values['reward.weights.tags']}" in (c.run.path / "config.yaml").read_text(), weights
    summary = [json.loads(l) for l in (sweep_dir / "inspect" / "sweep_summary.jsonl").read_text().splitlines()]
    assert len(summary) == 4 and all({"name", "config", "summary"} <= set(s) for s in summary)
    heat = mpimg.imread(sweep_dir / "inspect" / "sweep_heatmap_train_total_mean.png")
    assert heat.shape[0] > 100
