"""Numbers quoted from the MSGNN paper (Wang et al., IJCAI-24; shared/seeds/003_*.txt), with their source.

These are the paper's values, never ours: tables put them in columns labelled "quoted from the
paper". The paper reports PSNR/SSIM computed by its official test code, i.e. the kit's ``msgnn-rgb``
protocol (RGB PSNR on the clipped float output, Gaussian SSIM with zero padding), and its ablations
(Tables 2-5, Figure 7) are on Rain200H. Figure 7 gives its numbers only as a plot, so only the
parameter count the text states (N=2: 1.55 M) is quoted.
"""
from __future__ import annotations

from dataclasses import dataclass

PAPER = "MSGNN (Wang et al., IJCAI-24)"
PAPER_PROTOCOL = "msgnn-rgb (official test code)"


@dataclass(frozen=True)
class Quoted:
    psnr: float | None
    ssim: float | None
    dataset: str
    source: str  # e.g. "MSGNN paper, Table 2"
    note: str = ""
    protocol: str = PAPER_PROTOCOL


# Table 1: datasets x methods (PSNR, SSIM); parameters in millions as printed.
TABLE1_DATASETS = ("Rain200H", "Rain200L", "Rain1200", "Rain1400", "Rain12")
TABLE1_METHODS = ("RESCAN", "PReNet", "SpaNet", "DCSFN", "MSPFN", "RCDNet", "DualGCN", "MCDSS", "MSGNN")
_T1 = {
    "Rain200H": [(26.661, 0.8419), (27.640, 0.8872), (25.484, 0.8584), (28.469, 0.9016), (25.553, 0.8039),
                 (28.698, 0.8904), (28.758, 0.9026), (25.283, 0.8418), (29.627, 0.9178)],
    "Rain200L": [(36.993, 0.9788), (36.487, 0.9792), (36.075, 0.9774), (37.847, 0.9842), (30.367, 0.9219),
                 (38.400, 0.9841), (38.415, 0.9818), (32.138, 0.9563), (39.088, 0.9869)],
    "Rain1200": [(32.127, 0.9028), (27.307, 0.8712), (27.099, 0.8082), (32.275, 0.9228), (30.382, 0.8860),
                 (32.273, 0.9111), (32.033, 0.9163), (31.668, 0.9122), (33.110, 0.9274)],
    "Rain1400": [(30.969, 0.9117), (30.608, 0.9181), (29.000, 0.8891), (31.493, 0.9279), (31.514, 0.9203),
                 (31.016, 0.9164), (30.567, 0.9148), (30.355, 0.9177), (31.703, 0.9299)],
    "Rain12": [(32.965, 0.9545), (34.791, 0.9644), (33.217, 0.9546), (35.803, 0.9683), (34.253, 0.9469),
               (31.038, 0.9069), (35.805, 0.9687), (30.775, 0.9317), (36.799, 0.9707)],
}
TABLE1_PARAMS_M = dict(zip(TABLE1_METHODS, (0.15, 0.17, 0.28, 6.45, 21.00, 3.67, 2.73, 2.86, 2.46)))


def table1(method: str, dataset: str) -> Quoted:
    if method not in TABLE1_METHODS or dataset not in TABLE1_DATASETS:
        return Quoted(None, None, dataset, "MSGNN paper, Table 1", "not in the paper's Table 1")
    psnr, ssim = _T1[dataset][TABLE1_METHODS.index(method)]
    return Quoted(psnr, ssim, dataset, "MSGNN paper, Table 1")


# Table 2: components (Rain200H).
TABLE2 = {
    "M1": Quoted(29.161, 0.9111, "Rain200H", "MSGNN paper, Table 2", "no FC, no attention, no graph"),
    "M2": Quoted(29.451, 0.9147, "Rain200H", "MSGNN paper, Table 2", "FC"),
    "M3": Quoted(27.535, 0.8944, "Rain200H", "MSGNN paper, Table 2", "FC + ECA"),
    "M4": Quoted(29.397, 0.9149, "Rain200H", "MSGNN paper, Table 2", "FC + SE"),
    "M5": Quoted(29.488, 0.9163, "Rain200H", "MSGNN paper, Table 2", "FC + CT"),
    "M6": Quoted(29.627, 0.9178, "Rain200H", "MSGNN paper, Table 2", "FC + CT + graph (full model)"),
}

# Table 3: stride s at training patch 64 and 48 (Rain200H); s=1 at 64 did not fit the authors' memory.
TABLE3 = {
    (64, 1): Quoted(None, None, "Rain200H", "MSGNN paper, Table 3", "'-' in the paper: out of memory"),
    (64, 2): Quoted(29.472, 0.9168, "Rain200H", "MSGNN paper, Table 3"),
    (64, 3): Quoted(29.627, 0.9178, "Rain200H", "MSGNN paper, Table 3"),
    (48, 1): Quoted(29.011, 0.9116, "Rain200H", "MSGNN paper, Table 3"),
    (48, 2): Quoted(28.942, 0.9112, "Rain200H", "MSGNN paper, Table 3"),
    (48, 3): Quoted(29.016, 0.9119, "Rain200H", "MSGNN paper, Table 3"),
}

# Table 4: graph patch size l (Rain200H).
TABLE4 = {
    3: Quoted(29.627, 0.9178, "Rain200H", "MSGNN paper, Table 4"),
    5: Quoted(29.606, 0.9175, "Rain200H", "MSGNN paper, Table 4"),
    7: Quoted(29.584, 0.9178, "Rain200H", "MSGNN paper, Table 4"),
}

# Table 5: neighbours k (Rain200H).
TABLE5 = {
    3: Quoted(29.501, 0.9167, "Rain200H", "MSGNN paper, Table 5"),
    5: Quoted(29.627, 0.9178, "Rain200H", "MSGNN paper, Table 5"),
    7: Quoted(29.565, 0.9172, "Rain200H", "MSGNN paper, Table 5"),
}

# Figure 7: number of sub-networks N. Plotted only; the text quotes N=4 as the default and 1.55 M
# parameters at N=2 (Rain200H), with N=4 at 2.46 M (Table 1).
FIG7_PARAMS_M = {2: 1.55, 4: 2.46}


def fig7(n: int) -> Quoted:
    note = "values plotted only (no numbers in the text)"
    if n in FIG7_PARAMS_M:
        note += f"; paper states {FIG7_PARAMS_M[n]} M parameters"
    return Quoted(None, None, "Rain200H", "MSGNN paper, Figure 7", note)


# PReNet's own paper on Rain100L (the data set our Table 1 measures), as quoted in shared/README.md.
PRENET_RAIN100L = Quoted(37.48, 0.979, "Rain100L", "PReNet paper (Ren et al., CVPR 2019)",
                         "PReNet's own evaluation", protocol="matlab-y (Y channel, MATLAB)")
PRENET_RAIN100H = Quoted(29.46, 0.899, "Rain100H", "PReNet paper (Ren et al., CVPR 2019)",
                         "PReNet's own evaluation", protocol="matlab-y (Y channel, MATLAB)")
# The peers' own published Rain100L/H figures that our sources state (issue 14, from the RCDNet paper; PSNR
# only). Each paper trained on its own schedule; quoted beside ours with its protocol, never compared as ours.
PEERS_OWN = {
    "RCDNet": {
        "Rain100L": Quoted(40.00, None, "Rain100L", "RCDNet paper (Wang et al., CVPR 2020)", "RCDNet's own evaluation",
                           protocol="Y channel"),
        "Rain100H": Quoted(31.28, None, "Rain100H", "RCDNet paper (Wang et al., CVPR 2020)", "RCDNet's own evaluation",
                           protocol="Y channel"),
    },
    "PReNet": {"Rain100L": PRENET_RAIN100L, "Rain100H": PRENET_RAIN100H},
}


def none(note: str = "no counterpart in the paper") -> Quoted:
    return Quoted(None, None, "", "", note)


# UniRain (Yang et al., CVPR 2026), shared/reference/unirain-method.md: averages over its four rain types on
# its RainRAG test set (all methods retrained on RainRAG). Its metric script is not stated (probably pyiqa:
# PSNR on RGB, SSIM on Y); quoted beside ours only, never mixed with them.
_UNIRAIN = "UniRain paper (CVPR 2026)"
_UNIRAIN_PROTOCOL = "PSNR RGB / SSIM (script not stated)"
UNIRAIN_TABLE6 = {  # the MoE ablation (reference §5.4)
    "soft/soft": Quoted(27.91, 0.8465, "RainRAG (average of 4 types)", f"{_UNIRAIN}, Table 6", "symmetric soft MoE",
                        protocol=_UNIRAIN_PROTOCOL),
    "soft/hard": Quoted(28.93, 0.8515, "RainRAG (average of 4 types)", f"{_UNIRAIN}, Table 6",
                        "asymmetric (UniRain)", protocol=_UNIRAIN_PROTOCOL),
}
UNIRAIN_TABLE1_PER_TYPE = {  # UniRain's own row of its Table 1 (reference §5.2): type -> (PSNR, SSIM)
    "drs": (29.58, 0.8400), "drd": (24.71, 0.7687), "nrs": (35.23, 0.9592), "nrd": (26.21, 0.8380),
}
UNIRAIN_REWEIGHTING_GAIN_DB = 1.69  # Table 5 (summaries): reweighting vs fixed weights, average PSNR on RainRAG
UNIRAIN_DISTILLATION = {  # Table 4 (summaries): PSNR / SSIM averages on RainRAG
    "VLM judging only": (27.73, 0.8358), "retrieval only": (28.36, 0.8425), "full RAG distillation": (28.93, 0.8515),
}
