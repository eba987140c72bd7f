"""The README and docs/: every relative link resolves, anchors included, and the README stays a front door."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [link for link in LINK.findall(text) if not re.match(r"^[a-z]+:", link)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(link)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_checker_notices_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad anchor](#nowhere)\n", encoding="utf-8")
    assert relative_links(page) == ["#title", "missing.md", "#nowhere"]
    assert anchors(page) == {"title"}


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) < 12 * 1024
    for page in ("augmentation", "training-from-audio", "identification", "scaling", "performance",
                 "data-layouts", "safety"):
        assert f"docs/{page}.md" in readme


def test_docs_tables_match_the_committed_results(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import render_results

    assert render_results.main(["--check"]) == 0
    page = (ROOT / "docs" / "augmentation.md").read_text(encoding="utf-8")
    assert "<!-- results: crosscheck.json -->" in page
    tampered = page.replace("| `none` | none | 128 x 32 | - | 0 | 0.892", "| `none` | none | 128 x 32 | - | 0 | 0.999")
    assert tampered != page
    (tmp_path / "page.md").write_text(tampered, encoding="utf-8")
    assert render_results.main(["--check", "--docs", str(tmp_path)]) == 1
    assert "page.md" in capsys.readouterr().err
    assert render_results.main(["--docs", str(tmp_path)]) == 0
    assert (tmp_path / "page.md").read_text(encoding="utf-8") == page


def test_the_readme_shows_the_compact_back_end_ablation_and_an_unknown_view_is_refused(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import render_results

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- results: backend_ablation.json compact -->" in readme
    compact = render_results.render("backend_ablation.json", "compact")
    assert compact in readme and "| **plda** | **PLDA** |" in compact
    assert len(compact.splitlines()) == 2 + len(render_results.json.loads(
        (ROOT / "benchmarks" / "results" / "backend_ablation.json").read_text(encoding="utf-8"))["rows"])
    (tmp_path / "page.md").write_text("<!-- results: backend_ablation.json wide -->\n<!-- /results -->\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="unknown view 'wide'"):
        render_results.main(["--check", "--docs", str(tmp_path)])


@pytest.mark.parametrize("result", sorted((ROOT / "benchmarks" / "results").glob("*.json")), ids=lambda p: p.name)
def test_every_committed_result_says_when_and_where_it_was_measured(result):
    import json

    values = json.loads(result.read_text(encoding="utf-8"))
    assert values.get("date") and (values.get("machine") or values.get("cpu")), result.name


def test_readme_gives_the_exported_models_audio_rate_as_its_checkpoints():
    """`export --with-frontend` takes audio at the checkpoint's sample rate, 16 kHz only for the default front end."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `voxaug export"))
    assert "16 kHz" not in row and "checkpoint's rate" in row


COUNTS = "zero one two three four five six seven eight nine ten".split()
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_TABLE = re.compile(r"<!-- results:.*?<!-- /results -->", re.S)


def committed(name: str, results: Path = RESULTS) -> dict:
    return json.loads((results / name).read_text(encoding="utf-8"))


def plain_among_all(run: dict, backend: str) -> float:
    """A scored model's newcomers among all enrolled, with `backend` and no score normalisation."""
    return next(row["unseen_among_all"] for row in run["rows"] if row["backend"] == backend and row["score_norm"] == "none")


def figure(value: float) -> str:
    """A pattern of a figure as the prose states it, to three decimals."""
    return re.escape(f"{value:.3f}")


def span(values: list[float]) -> list[str]:
    return [figure(min(values)), figure(max(values))]


def count(n: int) -> str:
    """A pattern of a count as prose may state it, in words up to ten or in digits."""
    return f"(?:{COUNTS[n]}|{n})" if n < len(COUNTS) else str(n)


def held_out_mean(rows: list[dict], augment: str) -> float:
    """Mean over seeds of crosscheck's 300 held-out clips (validation + test, weighted by count) for one arm."""
    val_n, test_n = 120, 180
    scores = [(val_n * row["val_acc"] + test_n * row["test_acc"]) / (val_n + test_n) for row in rows
              if row["augment"] == augment and row["options"] == "--input-norm mean"]
    return sum(scores) / len(scores)


def readme_headline_claims(results: Path = RESULTS) -> list[list[str]]:
    """The README's quality claims, each as the patterns of the figures one paragraph of its prose states,
    recomputed from the committed results."""
    demo = plain_among_all(committed("backend_ablation.json", results), "plda")
    seeds = [plain_among_all(run, "plda") for run in committed("backend_ablation_demo_seeds.json", results)["runs"]]
    demo_set = next(s for s in committed("segment_batch.json", results)["sets"] if s["name"].startswith("demo"))
    short_crops = [plain_among_all(run, "plda") for run in demo_set["runs"] if "segment 64 x batch 64" in run["training"]]
    espeak = committed("backend_ablation_crosscheck_rebuilt.json", results)["runs"]
    crosscheck = committed("crosscheck.json", results)["rows"]
    default, none = held_out_mean(crosscheck, "reverb,noise"), held_out_mean(crosscheck, "none")
    return [
        [figure(demo), figure(0.70 - demo), count(len(seeds)), *span(seeds), figure(sum(seeds) / len(seeds)),
         figure(sum(short_crops) / len(short_crops))],
        [*span([plain_among_all(run, "plda") for run in espeak]), count(len(espeak)),
         *span([plain_among_all(run, "lda") for run in espeak]), figure(default), figure(default - none)],
    ]


def prose_paragraphs(readme: str) -> list[str]:
    """The README's paragraphs of prose: code blocks and generated results tables left out."""
    prose = RESULTS_TABLE.sub("", FENCE.sub("", readme))
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", prose)]


def states(paragraph: str, pattern: str) -> bool:
    """Whether ``paragraph`` states the figure, not as a part of a longer number or word."""
    return re.search(rf"(?<![\w.]){pattern}(?![\w])", paragraph) is not None


def missing_headline_figures(readme: str, results: Path = RESULTS) -> list[list[str]]:
    """The claims no single paragraph of the README's prose states with all their figures."""
    paragraphs = prose_paragraphs(readme)
    return [claim for claim in readme_headline_claims(results)
            if not any(all(states(paragraph, pattern) for pattern in claim) for paragraph in paragraphs)]


def check_readme_headline_figures(root: Path) -> None:
    """The figures the README's prose repeats by hand are its committed results; and a wrong figure of any claim
    would be noticed (each claim checked with one figure changed everywhere in the README)."""
    readme = (root / "README.md").read_text(encoding="utf-8")
    results = root / "benchmarks" / "results"
    assert missing_headline_figures(readme, results) == []
    for claim in readme_headline_claims(results):
        changed = re.sub(rf"(?<![\w.]){claim[-1]}(?![\w])", lambda found: found.group(0) + "1", readme)
        assert claim in missing_headline_figures(changed, results), claim[-1]


def test_the_readme_s_headline_figures_are_the_committed_results():
    """The prose around the README's tables repeats figures by hand; each must still be what its JSON says."""
    check_readme_headline_figures(ROOT)



def test_the_headline_check_follows_a_rerun_and_a_reworded_readme(tmp_path, monkeypatch):
    """It sought each figure in its exact sentence, bold and all, and its self-check replaced "mean 0.633" by hand: a
    demo rerun with one seed fewer, the README's figures updated to match, failed it; so did the same figures restated
    in other words (the seeds counted in digits, no bold)."""
    root = tmp_path / "repo"
    shutil.copytree(RESULTS, root / "benchmarks" / "results")
    seeds_file = root / "benchmarks" / "results" / "backend_ablation_demo_seeds.json"
    seeds = json.loads(seeds_file.read_text(encoding="utf-8"))
    before = [plain_among_all(run, "plda") for run in seeds["runs"]]
    seeds["runs"] = seeds["runs"][:-1]
    seeds_file.write_text(json.dumps(seeds), encoding="utf-8")
    after = before[:-1]
    old_mean, new_mean = f"{sum(before) / len(before):.3f}", f"{sum(after) / len(after):.3f}"
    assert old_mean != new_mean
    paragraphs = (ROOT / "README.md").read_text(encoding="utf-8").split("\n\n")
    for at, paragraph in enumerate(paragraphs):
        if f"{COUNTS[len(before)]} seeds" in paragraph and old_mean in paragraph:
            paragraphs[at] = (paragraph.replace(f"{COUNTS[len(before)]} seeds", f"{len(after)} seeds")
                              .replace(old_mean, new_mean).replace("**", ""))
    (root / "README.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    test_the_readme_s_headline_figures_are_the_committed_results()

DEMO_STUB = '''
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["DEMO_STUB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")


def option(name):
    return Path(args[args.index(name) + 1])


if args[0] == "synth":
    for part, speaker in (("enroll", "new000"), ("test", "new000"), ("test", "new001"), ("impostors", "imp000")):
        (Path(args[1]) / "unseen" / part / speaker).mkdir(parents=True)
        (Path(args[1]) / "unseen" / part / speaker / "000.pt").write_bytes(b"")
    (Path(args[1]) / "test_labels.csv").write_text("Id,Category\\nuttr-a.pt,spk000\\n")
elif args[0] == "predict":
    option("--out").write_text("Id,Category\\nuttr-a.pt,spk000\\n")
elif args[0] == "embed":
    Path(str(option("--index")) + ".json").write_text(json.dumps({"labels": ["spk000"]}))
elif args[0] == "evaluate":
    option("--out").mkdir()
    (option("--out") / "report.json").write_text(json.dumps({"open_set": {"acceptance": 0.5}}))
elif args[0] == "identify":
    clips = [arg for arg in args[1:] if arg.endswith(".pt")]
    for clip in clips:
        if not Path(clip).is_file():
            sys.exit(f"error: {clip}: feature file not found")
        print(json.dumps({"clip": clip, "top": [{"speaker": Path(clip).parent.name}], "decision": "unknown",
                          "threshold": {"value": 0.0, "source": "default"}}))
'''


def test_the_demo_runs_into_a_folder_whose_name_has_a_space(tmp_path):
    """demo.sh passes each clip to `voxaug identify` whole: a space in OUT split one path into two arguments."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "voxaug").write_text(f"#!{sys.executable}\n{DEMO_STUB}")
    (bin_dir / "voxaug").chmod(0o755)
    log = tmp_path / "calls.jsonl"
    out = tmp_path / "my démo"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DEMO_STUB_LOG": str(log)}
    result = subprocess.run(["bash", str(ROOT / "demo.sh"), str(out)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    first_identify = next(call for call in calls if call[0] == "identify")
    assert first_identify[first_identify.index("3") + 1:] == [
        str(out / "data" / "unseen" / "test" / speaker / "000.pt") for speaker in ("new000", "new001")]


@pytest.mark.parametrize("arguments, steps, code, says", [
    (["--help"], "2000", 0, "usage: [STEPS=N] bash demo.sh [OUT]"),
    (["-x"], "2000", 2, "error: -x: unknown option"),
    (["out", "extra"], "2000", 2, "error: one folder at most"),
    (["out"], "abc", 2, "error: STEPS must be a positive whole number, got 'abc'"),
    (["out"], "0", 2, "error: STEPS must be a positive whole number, got '0'"),
])
def test_the_demo_checks_its_arguments_before_it_runs_anything(tmp_path, arguments, steps, code, says):
    """A mistyped STEPS failed only at `voxaug train`, after minutes of synth, leaving a corpus that made the re-run
    refuse; `--help` was taken for the output folder."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "voxaug").write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls"\n')
    (bin_dir / "voxaug").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STEPS": steps}
    result = subprocess.run(["bash", str(ROOT / "demo.sh"), *arguments], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == code and says in result.stdout + result.stderr, result
    assert not (tmp_path / "calls").exists() and not (tmp_path / "out").exists()


def run_demo_with_a_logging_stub(tmp_path: Path, out: str):
    """demo.sh run in ``tmp_path`` into ``out`` with a `voxaug` that only logs its arguments to ``tmp_path/calls``."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "voxaug").write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls"\n')
    (bin_dir / "voxaug").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(ROOT / "demo.sh"), out], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("earlier", ["a folder holding files", "a file"])
def test_the_demo_refuses_an_output_that_is_not_a_new_or_empty_folder(tmp_path, earlier):
    """Its usage promises OUT is a new or empty folder, but only synth's OUT/data was checked: `bash demo.sh .` in the
    checkout wrote its corpus, run, index and embeddings/ (a package of the checkout) beside the code."""
    if earlier == "a file":
        (tmp_path / "out").write_text("notes\n")
    else:
        (tmp_path / "out" / "embeddings").mkdir(parents=True)
    result = run_demo_with_a_logging_stub(tmp_path, "out")
    assert result.returncode == 2 and "error: out: not a new or empty folder" in result.stderr, result
    assert result.stdout == "" and not (tmp_path / "calls").exists()


def test_the_demo_takes_an_empty_output_folder(tmp_path):
    """An empty folder, what an interrupted synth leaves, is new enough: the demo goes on to synth."""
    (tmp_path / "out").mkdir()
    result = run_demo_with_a_logging_stub(tmp_path, "out")
    assert (tmp_path / "calls").read_text().startswith("synth out/data --seed 0\n"), result


TRAINING_VALUE = re.compile(r"(--scale|--lr|--weight-decay|--mixup-alpha)[ =]([-+]?[0-9][0-9.]*(?:e[-+]?[0-9]+)?)\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_training_value_the_docs_give_is_one_train_accepts(page):
    """docs/safety.md gave `--scale 1e308` as a run that skips all its steps and fails, after that value was refused
    up front; a value a page gives for these options must pass train's checks, or the page is out of date."""
    from voxaug.augment.mixup import Mixup
    from voxaug.config import resolve_config

    for option, value in TRAINING_VALUE.findall(page.read_text(encoding="utf-8")):
        number = float(value)
        if option == "--mixup-alpha":
            Mixup(number)
        elif option == "--scale":
            resolve_config("cpu", model_overrides={"scale": number}).validate()
        else:
            resolve_config("cpu", overrides={option[2:].replace("-", "_"): number}).validate()


@pytest.mark.parametrize("name", ["safety.md", "training.md"])
def test_the_training_limits_the_docs_give_are_the_codes(name):
    """docs/training.md listed no limit for --scale, --lr or --weight-decay after train began to refuse values past
    them up front; the pages that state them must give the numbers train checks."""
    from voxaug.augment.mixup import MIN_ALPHA
    from voxaug.config import MAX_LR, MAX_SCALE

    page = (ROOT / "docs" / name).read_text(encoding="utf-8")
    text = " ".join(page.split())
    bound = re.search(r"`--lr` or `--scale` above ([0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)", text)
    assert bound and float(bound.group(1)) == MAX_LR == MAX_SCALE, name
    assert "`--weight-decay` times `--lr` of 1 or more" in text, name
    alpha = re.search(r"`--mixup-alpha` below ([0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)", text)
    assert alpha is None or float(alpha.group(1)) == MIN_ALPHA, name


SCRATCH_OPTIONS = {"--pooled-layers"}  # identification-experiments.md: a prototype's option, said to be no voxaug one


def documented_options(page: Path) -> list[tuple[str, str]]:
    """(command, option) for every ``--option`` a page writes after ``voxaug COMMAND`` on the same line."""
    found = []
    for line in page.read_text(encoding="utf-8").splitlines():
        for command, rest in re.findall(r"voxaug (?:--debug )?([a-z]+)((?:[^`\n]|\\\|)*)", line):
            found += [(command, option) for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)]
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_option_a_page_gives_a_command_is_one_it_takes(page):
    """A command written in the docs must still run as written: each option a page gives `voxaug COMMAND` is one
    of that command's (a renamed or removed option would leave the page telling users to type an error)."""
    import typer.main

    from voxaug.cli.main import app

    commands = {name: {option for param in command.params for option in param.opts + param.secondary_opts}
                for name, command in typer.main.get_command(app).commands.items()}
    unknown = [(command, option) for command, option in documented_options(page)
               if command in commands and option not in commands[command] | {"--help"} | SCRATCH_OPTIONS]
    assert not unknown, f"{page.name}: {unknown}"


def test_no_option_s_help_states_its_shown_default_again():
    """`evaluate --help` read 'False-alarm rate the threshold allows (default 0.01). [default: 0.01]': a default that
    Typer shows from the declaration is not written in the words too, where a changed default would leave them wrong."""
    import typer.main

    from voxaug.cli.main import app

    twice = [(name, param.opts[0]) for name, command in typer.main.get_command(app).commands.items()
             for param in command.params
             if param.default not in (None, False) and param.show_default is not False
             and re.search(r"\(default[ :]", getattr(param, "help", None) or "")]
    assert not twice, twice
