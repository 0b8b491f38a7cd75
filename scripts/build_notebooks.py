#!/usr/bin/env python3
"""Write the notebooks in notebooks/ from the cell texts below (one source of truth for their shape).

    python scripts/build_notebooks.py              # write notebooks/*.ipynb (no outputs)
    python scripts/build_notebooks.py --execute    # also run them (smoke) and keep only the outputs of
                                                   # `# NBVAL_CHECK_OUTPUT` cells, which nbval compares

Notebooks stay thin: a parameters cell (smoke defaults; profiles in notebooks/profiles/*.yaml), a
grid of runs fetched through `derainkit.experiments.Lab`, a checked summary, and rendering.

This script is the notebooks' source: `tests/test_notebooks_generated.py` fails when a committed
notebook's cells differ from what it writes (outputs aside), so edit here and rerun it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
sys.path.insert(0, str(ROOT))  # the kit itself, when run from a clone without installing

# The parameters cell: the smoke profile's values (derainkit/experiments/profiles/smoke.yaml, the one
# source of the defaults), each with its comment.
_COMMENTS = {
    "results_dir": "records and tables go to <results_dir>/<profile>/ ($DERAINKIT_RESULTS overrides)",
    "eval_limit": "score the first N test pairs (0: all)",
    "model_config": "base MSGNN config of every row",
    "run_overrides": "any other RunConfig key: lr, precision, channels_last, exemplar, ...",
    "protocols": "the first is plotted; msgnn-rgb is the paper's protocol",
    "force": "recompute rows that already have a record",
    "seeds": "ablation rows: one run per seed, mean ± std; single runs: the first",
}
_KEYS = ("profile", "results_dir", "train_data", "test_data", "eval_limit", "iterations", "crop", "batch",
         "model_config", "run_overrides", "device", "protocols", "seeds", "force")


def _literal(value) -> str:
    """Python source for a YAML value (JSON spelling, as the notebooks have always shown it)."""
    if value is None or isinstance(value, bool):
        return repr(value)
    return json.dumps(value)


def parameters(target: str, extra: str) -> str:
    from derainkit.experiments.lab import profile_values

    smoke = profile_values("smoke")
    values = {**{k: smoke[k] for k in _KEYS if k in smoke}, "profile": smoke["name"], "results_dir": "../results",
              "force": False}
    lines = ["# Parameters (papermill). Defaults: the smoke profile (embedded synthetic data, seconds on a CPU).",
             f"# Other profiles: `make {target} PROFILE=cpu|gpu|paper` passes notebooks/profiles/<profile>.yaml."]
    for key in _KEYS:
        line = f"{key} = {_literal(values[key])}"
        if key in _COMMENTS:
            line = (line.ljust(29) if len(line) < 29 else line + "  ") + "# " + _COMMENTS[key]
        lines.append(line)
    return "\n".join(lines) + extra


SETUP = '''from pathlib import Path

from IPython.display import Image, Markdown, display

from derainkit.experiments import Lab, Row, paper_values as paper
from derainkit.experiments.tables import describe, image_panel

lab = Lab.from_namespace(globals())
print("results:", lab.root)'''

SHOW = '''md = lab.render({item!r}, TITLE, rows{plot_args})
display(Markdown(md.read_text()))
if (lab.root / "{item}.png").exists():
    display(Image(str(lab.root / "{item}.png")))'''

CHECK = '''# NBVAL_CHECK_OUTPUT
print(describe(rows))'''


def nb(item: str, target: str, title: str, intro: str, grid: str, extra_params: str = "",
       plot_args: str = "", after: str = "") -> nbformat.NotebookNode:
    cells = [new_markdown_cell(f"# {title}\n\n{intro}\n\nRun: `make {target}` (smoke), "
                               f"`make {target} PROFILE=cpu`, or edit the parameters below and run all."),
             new_code_cell(parameters(target, extra_params), metadata={"tags": ["parameters"]}),
             new_code_cell(SETUP),
             new_code_cell(f"TITLE = {title!r}\n" + grid),
             new_code_cell(CHECK),
             new_code_cell(SHOW.format(item=item, plot_args=plot_args))]
    if after:
        cells.append(new_code_cell(after))
    book = new_notebook(cells=cells)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    return book


NOTEBOOKS = {
    "table1_benchmarks": dict(
        item="table1", target="table1",
        title="Table 1: MSGNN and peers on a benchmark test set",
        intro=("The paper's Table 1 compares eight methods on Rain200H/L, Rain1200, Rain1400 and Rain12 (quoted "
               "below). We measure on the profile's test set (Rain100L test in the cpu/gpu profiles, which the "
               "paper does not report): the rainy input, PReNet with its official Rain100L weights, the MSGNN "
               "checkpoint the kit ships, and an MSGNN trained under this profile, all with one protocol."),
        extra_params=('\nprenet_weights = "../../shared/weights/prenet/Rain100L/PReNet6_net_latest.pth"'
                      '\nmsgnn_weights = None       # None: the checkpoint shipped with the kit'
                      '\ntable1_eval_limit = 0      # Table 1 scores the whole test set whatever eval_limit says'
                      '\nweights_dir = "../../shared/weights"  # official peer weights: spanet/, drn/, prenet/, nlcl/'
                      '\ntrain_peers = ["rescan", "spanet", "dcsfn", "mspfn", "rcdnet", "dualgcn", "moss", "nlcl"]'
                      '\npeer_model_configs = {m: {"preset": "small"} for m in ("dcsfn", "mspfn", "rcdnet", "dualgcn", "moss")}'
                      '\npeer_model_configs["nlcl"] = {"channels": 8, "res_blocks": 4, "disc_channels": 16, "head_channels": 32}'
                      '\npeer_task_configs = {"nlcl": {"loss": {"gen_layers": [0, 2, 4], "num_patches": 64, "num_neg": 32}}}'),
        grid='''from derainkit.experiments import costs
from derainkit.models import get_model_spec

lab = Lab.from_namespace({**globals(), "eval_limit": table1_eval_limit})
wdir = Path(weights_dir) if weights_dir else Path("/nonexistent")

def quoted(method):  # the MSGNN paper's Table 1, then the method's own published Rain100L/H figures
    return {**{d: paper.table1(method, d) for d in paper.TABLE1_DATASETS}, **paper.PEERS_OWN.get(method, {})}

figures = costs.bench_figures()  # make bench's step and 1 MP times, attached to rows of the same model size

def official(setting, model, path, quotes=None):
    path = Path(path) if path else None
    rec = lab.eval_weights(model, path) if path and path.is_file() else None
    return Row(setting, rec, quotes or {}, why_not_run=f"weights not found: {path}",
               extra=costs.row_costs(model, rec, figures))

def trained(setting, model, quotes=None):
    if model not in train_peers:
        return Row(setting, None, quotes or {}, why_not_run=lab.training_cost(model),
                   extra=costs.row_costs(model, None, figures))
    rec = lab.train_eval(model=model, model_config=peer_model_configs.get(model), task_config=peer_task_configs.get(model, {}))
    return Row(setting, rec, quotes or {}, extra=costs.row_costs(model, rec, figures))

rows = [Row("rainy input", lab.eval_input(), {})]
rows.append(official("PReNet (official Rain100L weights)", "prenet", prenet_weights, quoted("PReNet")))
for name, model, file in (("PRN", "prn", "PRN6"), ("PReNet_r", "prenet_r", "PReNet6_r"), ("PRN_r", "prn_r", "PRN6_r")):
    rows.append(official(f"{name} (official Rain100L weights)", model, wdir / "prenet" / "Rain100L" / f"{file}_net_latest.pth"))
shipped = Path(msgnn_weights) if msgnn_weights else get_model_spec("msgnn").default_weights
rows.append(official("MSGNN (kit's shipped checkpoint)", "msgnn", shipped, quoted("MSGNN")))
msgnn_rec = lab.train_eval()
rows.append(Row("MSGNN (trained in this profile)", msgnn_rec, quoted("MSGNN"), extra=costs.row_costs("msgnn", msgnn_rec, figures)))
for method, model in (("RESCAN", "rescan"), ("SpaNet", "spanet"), ("DCSFN", "dcsfn"), ("MSPFN", "mspfn"),
                      ("RCDNet", "rcdnet"), ("DualGCN", "dualgcn"), ("MCDSS", "moss")):
    rows.append(trained(f"{method} (trained by the kit in this profile, its own loss)", model, quoted(method)))
rows.append(official("SPANet (official weights, trained on SPA-Data real rain)", "spanet", wdir / "spanet" / "latest"))
rows.append(official("DRN (official Rain100L weights; extra light peer)", "drn", wdir / "drn" / "Rain100L" / "net_latest.pth"))
rows.append(official("DRN (official Rain100H weights)", "drn", wdir / "drn" / "Rain100H" / "net_latest.pth"))
rows.append(official("NLCL (official RealRain weights: unpaired, trained on other real data)", "nlcl",
                     wdir / "nlcl" / "latest_net_Back.pth"))
rows.append(trained("NLCL (trained unpaired by the kit: rainy half vs the other scenes' clean half)", "nlcl"))
from derainkit.experiments import unirain_study
rows.append(Row("UniRain (trained by the kit as in the UniRain notebook: four-type mix of the training pairs)",
                unirain_study.table1_record(lab), {}))''',
        plot_args=', plot=None, footnotes=[costs.cost_note(figures)]'),
    "table2_components": dict(
        item="table2", target="table2",
        title="Table 2: ablation of the components (M1-M6)",
        intro=("Fusion connection (FC), channel attention (ECA, SE, or the CT/GCT the model uses) and the graph "
               "module, switched one at a time as in the paper's M1-M6."),
        grid='''GRID = {  # paper row -> model_config changes from the profile's base config
    "M1": dict(fusion_connection=False, attention="none", graph=False),
    "M2": dict(fusion_connection=True, attention="none", graph=False),
    "M3": dict(fusion_connection=True, attention="eca", graph=False),
    "M4": dict(fusion_connection=True, attention="se", graph=False),
    "M5": dict(fusion_connection=True, attention="gct", graph=False),
    "M6": dict(fusion_connection=True, attention="gct", graph=True),
}
rows = [Row(f"{name}: {paper.TABLE2[name].note}", lab.train_eval_seeds(model_config=cfg), {"Rain200H": paper.TABLE2[name]}, x=name)
        for name, cfg in GRID.items()]
REFERENCE = f"M6: {paper.TABLE2['M6'].note}"  # the full model: verdicts are about each row's difference to it''',
        plot_args=', reference=REFERENCE'),
    "table3_stride": dict(
        item="table3", target="table3",
        title="Table 3: graph stride s at training patch 64 and 48",
        intro=("Stride of the graph patches (s = 1, 2, 3 with patch size l = 3) at training crops of 64 and 48. "
               "The paper could not fit s = 1 at 64 in memory; the kit's windowed kNN can (set `skip` to leave "
               "any cell out, e.g. on a slow CPU)."),
        extra_params='\nskip = []                    # e.g. [[64, 1]] to leave (crop, stride) cells out',
        grid='''rows, REFERENCE = [], {}
for c in (64, 48):
    for s in (1, 2, 3):
        skipped = [c, s] in [list(x) for x in skip]
        rec = None if skipped else lab.train_eval_seeds(model_config={"stride": s}, crop=c)
        rows.append(Row(f"crop {c}, s = {s}", rec, {"Rain200H": paper.TABLE3[(c, s)]}, x=s,
                        why_not_run=f"skipped in profile `{lab.profile.name}` (its `skip` parameter: the cost)"))
        REFERENCE[f"crop {c}, s = {s}"] = f"crop {c}, s = 3"  # the full model's stride, at the same crop''',
        plot_args=', reference=REFERENCE'),
    "table4_patch_size": dict(
        item="table4", target="table4",
        title="Table 4: graph patch size l",
        intro="Size of the graph patches l = 3, 5, 7 (stride 3, k = 5).",
        grid='''rows = [Row(f"l = {l}", lab.train_eval_seeds(model_config={"patch_size": l}), {"Rain200H": paper.TABLE4[l]}, x=l)
        for l in (3, 5, 7)]''', plot_args=', xlabel="graph patch size l", reference="l = 3"'),
    "table5_neighbours": dict(
        item="table5", target="table5",
        title="Table 5: number of nearest neighbours k",
        intro="Neighbours per graph patch k = 3, 5, 7.",
        grid='''rows = [Row(f"k = {k}", lab.train_eval_seeds(model_config={"k": k}), {"Rain200H": paper.TABLE5[k]}, x=k)
        for k in (3, 5, 7)]''', plot_args=', xlabel="neighbours k", reference="k = 5"'),
    "fig7_subnetworks": dict(
        item="fig7", target="fig7",
        title="Figure 7: number of sub-networks N",
        intro=("PSNR and parameter count against the number of sub-networks N. The paper plots these (no numbers "
               "in the text) and states 1.55 M parameters at N = 2; with N = 1 the graph features feed nothing, "
               "as in the official code."),
        extra_params='\nn_values = [1, 2, 3, 4]',
        grid='''rows = [Row(f"N = {n}", lab.train_eval_seeds(model_config={"n_subnets": n}), {"Rain200H": paper.fig7(n)}, x=n)
        for n in n_values]''',
        plot_args=', plot="sweep", xlabel="sub-networks N", paper_params_m=paper.FIG7_PARAMS_M,'
                  ' reference="N = 4" if 4 in n_values else None'),
    "fig8_multiscale": dict(
        item="fig8", target="fig8",
        title="Figure 8: multi-scale internal inputs on a real image",
        intro=("Graph branches over O only, O + O/2, and O + O/2 + O/4 (with the exemplar branch on in all), "
               "shown on a real rainy photo as in the paper, and scored on the test set (which the paper does "
               "not report for this ablation)."),
        extra_params=('\nreal_image = "../../shared/data/nlcl_realrain/rainy"  # file or folder (first image); '
                      'missing: a test image\nmax_side = 256'),
        grid='''GRID = {"O": (1,), "O + O/2": (1, 2), "O + O/2 + O/4 (default)": (1, 2, 4)}
rows = [Row(name, lab.train_eval_seeds(model_config={"scales": list(sc)}), {}, x=len(sc)) for name, sc in GRID.items()]
image = lab.find_image(real_image)
outs = [lab.derain_image(r.record, image, max_side) for r in rows]
png = image_panel(lab.root / "fig8_real.png", TITLE,
                  [(f"rainy: {image.name}", lab.input_image(outs[0]))] + [(r.setting, o) for r, o in zip(rows, outs)])''',
        plot_args=', reference="O + O/2 + O/4 (default)"', after='display(Image(str(png)))'),
    "fig9_exemplar": dict(
        item="fig9", target="fig9",
        title="Figure 9: the exemplar branch on a real image",
        intro=("MSGNN with and without its external exemplar branch, on a real rainy photo and scored on the "
               "test set. Training pairs the exemplar by the paper's rule (`random`) here; the "
               "exemplar-policy notebook compares the rules."),
        extra_params=('\nreal_image = "../../shared/data/nlcl_realrain/rainy"  # file or folder (first image); '
                      'missing: a test image\nmax_side = 256'),
        grid='''rows = [Row("without exemplar", lab.train_eval_seeds(model_config={"exemplar": False}, exemplar="none"), {}, x=0),
        Row("with exemplar (random)", lab.train_eval_seeds(model_config={"exemplar": True}, exemplar="random"), {}, x=1)]
image = lab.find_image(real_image)
outs = [lab.derain_image(r.record, image, max_side) for r in rows]
png = image_panel(lab.root / "fig9_real.png", TITLE,
                  [(f"rainy: {image.name}", lab.input_image(outs[0]))] + [(r.setting, o) for r, o in zip(rows, outs)])''',
        plot_args=', reference="with exemplar (random)"', after='display(Image(str(png)))'),
    "extra_code_vs_paper": dict(
        item="code_vs_paper", target="code-vs-paper",
        title="Beyond the paper: the official code vs the paper's description",
        intro=("The `code` variant computes what the official code does (the paper's numbers came from it); the "
               "`paper` variant follows the text where the two disagree (shared embedding trained through the "
               "graph, signed edge features, embedding aggregation, self-neighbour, 5x5 fusion, centred window; "
               "see derainkit/models/msgnn/config.py)."),
        grid='''rows = [Row("variant = code (default)", lab.train_eval_seeds(model_config={"variant": "code"}), {}, x="code"),
        Row("variant = paper", lab.train_eval_seeds(model_config={"variant": "paper"}), {}, x="paper")]''',
        plot_args=', caveat="", reference="variant = code (default)"'),
    "extra_exemplar_policies": dict(
        item="exemplar_policies", target="exemplar-policies",
        title="Beyond the paper: exemplar pairing policies",
        intro=("How the training exemplar is chosen: `official` (the code's filesystem-order rule), `random` (the "
               "paper's text), `self` (the input itself), `retrieval` (the most similar rainy training image, the "
               "paper's future work), and `none` (no exemplar branch)."),
        grid='''rows = [Row(f"exemplar = {pol}", lab.train_eval_seeds(exemplar=pol), {}, x=pol)
        for pol in ("official", "random", "self", "retrieval")]
rows.append(Row("exemplar = none (branch off)", lab.train_eval_seeds(model_config={"exemplar": False}, exemplar="none"), {}, x="none"))''',
        plot_args=', caveat="", reference="exemplar = official"'),
    "extra_protocol_gap": dict(
        item="protocol_gap", target="protocol-gap",
        title="Beyond the paper: the metric-protocol gap",
        intro=("The same outputs scored under the three protocols papers use: `matlab-y` (Y channel, MATLAB "
               "rgb2ycbcr, uint8), `y-float` (Y channel in float), and `msgnn-rgb` (MSGNN's official RGB "
               "metrics). Mixing them across papers shifts PSNR by about a dB."),
        extra_params='\nprenet_weights = "../../shared/weights/prenet/Rain100L/PReNet6_net_latest.pth"',
        grid='''from derainkit.models import get_model_spec

lab = Lab.from_namespace({**globals(), "protocols": ["matlab-y", "y-float", "msgnn-rgb"]})
rows = [Row("rainy input", lab.eval_input(), {})]
prenet = Path(prenet_weights) if prenet_weights else None
rows.append(Row("PReNet (official weights)", lab.eval_weights("prenet", prenet) if prenet and prenet.is_file() else None,
                {"Rain100L": paper.PRENET_RAIN100L}, why_not_run=f"weights not found: {prenet}"))
shipped = get_model_spec("msgnn").default_weights
rows.append(Row("MSGNN (kit's shipped checkpoint)", lab.eval_weights("msgnn", shipped) if shipped else None, {},
                why_not_run="no shipped checkpoint"))''',
        plot_args=', plot=None, caveat=""'),
    "nlcl_real_rain": dict(
        item="nlcl", target="nlcl",
        title="NLCL: unsupervised deraining of real rain, and the TPAMI intrinsic-dimension claim",
        intro=("NLCL (Ye et al., CVPR 2022) learns from unpaired rainy and clean images, so it can train on real "
               "rain. (1) The official weights (trained on real rain) on real photos: background, rain layer and "
               "NIQE, the no-reference measure papers report on real rain (lower is better). (2) NLCL trained "
               "unpaired by the kit on the profile's training set (its rainy half against the clean half of the "
               "other scenes), scored on the paired test set (PSNR) and on the photos (NIQE). (3) The TPAMI 2024 "
               "extension's premise, tested on our data: non-local background patches have a higher intrinsic "
               "dimension than rain patches (TwoNN and Levina-Bickel, 95 % intervals). The asymmetric loss built "
               "on it is our reconstruction from the abstract (see the README)."),
        extra_params=('\nnlcl_weights = "../../shared/weights/nlcl/latest_net_Back.pth"  # official RealRain weights'
                      '\nreal_photos = "../../shared/data/nlcl_realrain/rainy"'
                      '\nphoto_limit = 2             # photos scored and shown (0: all)'
                      '\nmax_side = 256'
                      '\nnlcl_model_config = {"channels": 8, "res_blocks": 4, "disc_channels": 16, "head_channels": 32}'
                      '\nnlcl_task_config = {"loss": {"gen_layers": [0, 2, 4], "num_patches": 64, "num_neg": 32}}'
                      '\nid_limit = 2                # test images (and photos) in the intrinsic-dimension study'),
        grid='''from derainkit.experiments import nlcl_study as study
from derainkit.experiments.tables import image_grid, render_rows

weights = Path(nlcl_weights) if nlcl_weights else None
photos = Path(real_photos) if real_photos else None
have_official = weights is not None and weights.is_file()
have_photos = photos is not None and photos.is_dir()
shots, grid = [], []
if have_official and have_photos:
    shots, grid, official_niqe = study.official_on_photos(lab, weights, photos, photo_limit, max_side)
official = lab.eval_weights("nlcl", weights) if have_official else None
trained = lab.train_eval(model="nlcl", model_config=nlcl_model_config, task_config=nlcl_task_config)
trained_niqe = (lab.on(test_data=str(photos), protocols=("niqe",), eval_limit=photo_limit)
                .train_eval(model="nlcl", model_config=nlcl_model_config, task_config=nlcl_task_config)
                if have_photos else None)
ids = study.intrinsic_dimension(lab, weights if have_official else None, photos if have_photos else None, id_limit,
                               max_side=max_side)
# the asymmetric loss takes its temperature ratio from the *training* set's layers (never the test set's)
id_train = study.intrinsic_dimension(lab.on(test_data=train_data), None, None, id_limit, max_side=max_side)
ratio = study.id_ratio(id_train)
asym_task = {**nlcl_task_config, "loss": {**nlcl_task_config.get("loss", {}), "contrast": "asymmetric", "id_ratio": ratio}}
asymmetric = lab.train_eval(model="nlcl", model_config=nlcl_model_config, task_config=asym_task)
rows = [Row("rainy input", lab.eval_input(), {}),
        Row("NLCL, official RealRain weights (trained on other, real data)", official, {},
            why_not_run=f"weights not found: {weights}"),
        Row("NLCL, trained unpaired by the kit (symmetric layer loss, CVPR 2022)", trained, {}),
        Row(f"NLCL, trained unpaired by the kit (asymmetric layer loss, ours; ID ratio {ratio:.2f} from the training set)",
            asymmetric, {})]
niqe_notes = [study.niqe_note("the kit's symmetric run", trained_niqe)] if trained_niqe else []''',
        plot_args=', plot=None, caveat=("NLCL reports no Rain100L figure; the official weights were trained on real '
                  'rain, ours unpaired on the profile\'s training set for a short schedule."), footnotes=niqe_notes',
        after='''notes = [f"Profile `{lab.profile.name}`; NIQE: LIVE release pristine model, full-size photos, outputs quantised as the official test saved them."]
if shots:
    display(Markdown(render_rows(lab.root, "nlcl_photos", "NLCL official weights on real photos: NIQE", shots, notes).read_text()))
    display(Image(str(image_grid(lab.root / "nlcl_photos.png", "NLCL official weights on real rain", grid))))
curves = lab.training_curves("nlcl_curves", "NLCL trained unpaired by the kit: training losses",
                             {"symmetric (CVPR 2022)": trained, "asymmetric (ours)": asymmetric})
if curves:
    display(Image(str(curves)))
display(Markdown(render_rows(lab.root, "nlcl_intrinsic_dim", "Intrinsic dimension of non-local background vs rain patches",
                             study.id_rows(ids), [f"record `{ids['key']}`; 8x8 patches, the 16 most similar in a 40-px window around 10 anchors per image"]).read_text()))'''),
    "unirain_four_types": dict(
        item="unirain", target="unirain",
        title="UniRain: one model for four kinds of rain (our offline reconstruction)",
        intro=("UniRain (Yang et al., CVPR 2026) trains one network for day/night x streaks/raindrops: soft "
               "mixture-of-experts in the encoder, top-k experts in the decoder, per-rain-type loss weights "
               "that follow each type's convergence, and a training set distilled by retrieval against real rain. "
               "Its release has no model code and its distillation needs BLIP, CLIP and three VLMs: everything "
               "here is our offline reconstruction (network from the paper's equations, judges NIQE / a "
               "classifier / pair sanity in place of the VLMs, synthetic raindrops and night scenes from the "
               "profile's clean images, the profile's real pairs as day streaks). The paper's ablations are "
               "quoted beside ours; they are on its RainRAG set and not comparable in value."),
        extra_params=('\nreal_photos = "../../shared/data/nlcl_realrain/rainy"  # real-rain references for the distillation'
                      '\npool_count = 6              # training pairs of the profile made into the four-type pool (0: all)'
                      '\ntest_count = 3              # test pairs of the profile made into the four-type test set'
                      '\ndata_side = 96              # generated images are downscaled to this side (None: as they are)'
                      '\nunirain_model_config = {"preset": "small"}'
                      '\nunirain_task = {"epoch_iterations": 5, "val_size": 1, "warmup_epochs": 1, "val_crop": 48}'
                      '\ndistill_config = {"k1": 3, "k2": 2, "k3": 1}'),
        grid='''from derainkit.data.rain_types import RAIN_TYPES, TYPE_NAMES, write_type_examples
from derainkit.experiments import unirain_study as study
from derainkit.experiments.tables import render_rows

pool = study.four_types(train_data, count=pool_count, seed=0, max_side=data_side)
test = study.four_types(test_data, count=test_count, seed=1, max_side=data_side)
examples = write_type_examples(test, lab.output_path("unirain_types.png"), per_type=2)
photos = Path(real_photos) if real_photos else None
have_refs = photos is not None and photos.is_dir()

def variant(model_config=None, task=None, data=pool):
    return dict(model="unirain", model_config={**unirain_model_config, **(model_config or {})},
                task_config={**unirain_task, **(task or {})}, train_data=str(data))

VARIANTS = {"asymmetric MoE, reweighted (UniRain), naive mix": variant(),
            "symmetric soft/soft MoE, reweighted, naive mix": variant({"encoder_routing": "soft", "decoder_routing": "soft"}),
            "asymmetric MoE, uniform weights, naive mix": variant(task={"reweighting": "uniform"})}
if have_refs:
    distilled, naive, kept = study.distillation(lab, pool, photos, distill_config)
    validation = study.filter_validation(lab, pool, photos, 0.3, 1, distill_config)
    VARIANTS["asymmetric MoE, reweighted, distilled data"] = variant(data=kept)
results = {name: study.per_type(lab, test, RAIN_TYPES, **kw) for name, kw in VARIANTS.items()}
quotes = {"symmetric soft/soft MoE, reweighted, naive mix": {"RainRAG": paper.UNIRAIN_TABLE6["soft/soft"]},
          "asymmetric MoE, reweighted (UniRain), naive mix": {"RainRAG": paper.UNIRAIN_TABLE6["soft/hard"]}}
rows = [Row(f"{name}: {t} ({TYPE_NAMES[t]})", rec, quotes.get(name, {}) if t == "drs" else {})
        for name, recs in results.items() for t, rec in recs.items()]''',
        plot_args=', plot=None, caveat=("Ours: each row scored on one rain type of the four-type test set made from the '
                  'profile\'s test pairs (generated raindrops and night scenes; the real pairs as day streaks). Paper: '
                  'RainRAG averages of its Table 6, quoted on the day-streak rows only as a reference, not comparable.")',
        after='''display(Image(str(examples)))
protocol = lab.profile.protocols[0]
display(Markdown(render_rows(lab.root, "unirain_per_type", f"UniRain variants per rain type ({protocol})",
                             study.per_type_rows(results, protocol),
                             [f"Paper (RainRAG, quoted): soft/soft 27.91, asymmetric 28.93 dB (Table 6); reweighting "
                              f"+{paper.UNIRAIN_REWEIGHTING_GAIN_DB} dB (Table 5)"]).read_text()))
if have_refs:
    display(Markdown(f"Distillation keep-list `{distilled['keeplist_version']}`: kept {distilled['kept']} of "
                     f"{distilled['total']} pairs ({distilled['kept_by_type']}), record `{distilled['key']}`."))
    display(Markdown(render_rows(lab.root, "unirain_distill_validation",
                                 "Distillation filter on a pool with 30 % corrupted pairs (precision / recall of rejection)",
                                 study.validation_rows(validation),
                                 ["judges: J1 NIQE-style realism vs the references, J2 a cross-fitted real-vs-candidate "
                                  "classifier, J3 pair sanity; rules: 2of3 (the paper's vote), sanity_veto"]).read_text()))'''),
}


def build(execute: bool, names: list[str]) -> None:
    NB_DIR.mkdir(exist_ok=True)
    unknown = set(names) - set(NOTEBOOKS)
    if unknown:
        raise SystemExit(f"unknown notebook(s) {sorted(unknown)}; known: {list(NOTEBOOKS)}")
    for name, spec in NOTEBOOKS.items():
        if names and name not in names:
            continue
        book = nb(**spec)
        path = NB_DIR / f"{name}.ipynb"
        if execute:
            from nbclient import NotebookClient

            with tempfile.TemporaryDirectory() as tmp:
                os.environ["DERAINKIT_RESULTS"] = tmp
                NotebookClient(book, timeout=1800, kernel_name="python3",
                               resources={"metadata": {"path": str(NB_DIR)}}).execute()
            for number, cell in enumerate((c for c in book.cells if c.cell_type == "code"), start=1):
                keep = cell.source.startswith("# NBVAL_CHECK_OUTPUT")
                cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"] if keep else []
                # nbval treats a cell with outputs but no execution count as "unrun" and fails it
                cell.execution_count = number if keep else None
        nbformat.write(book, path)
        print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--execute", action="store_true", help="run each notebook (smoke) to record checked outputs")
    ap.add_argument("names", nargs="*", help="notebooks to build (default: all)")
    args = ap.parse_args()
    build(args.execute, args.names)
    sys.exit(0)
