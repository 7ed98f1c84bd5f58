"""The paper's linear probe as data: its hyper-parameters per script, each value with its line.

The probe (AMi-Br, arXiv 2506.21444, Methods) is one ``nn.Linear`` on frozen features, trained as
``classifiers.heads.TorchLinearProbe`` reproduces. Six of the seven public scripts
(``Foundation_Models/Linear_Probing/<model>/*.py`` at ``source.SCRIPTS_AT``) use the published values
(``PAPER_PROBE_PARAMS``); only Prov-GigaPath's differs, in two (lr 1e-3, weight decay 1e-4).
``paper_probe_params`` gives a recipe family its own script's differences, so "the paper's probe"
means that model's script.
"""

from __future__ import annotations

from dataclasses import dataclass

from .source import Setting

PROBE_DIR = "Foundation_Models/Linear_Probing"

# The published hyper-parameters, named as ``TorchLinearProbe``'s parameters.
PAPER_PROBE_PARAMS = dict(lr=5e-5, weight_decay=1e-5, batch_size=8, max_epochs=100, patience=15,
                          lr_factor=0.5, lr_patience=3, min_lr=1e-7)


@dataclass(frozen=True)
class ProbeScript:
    """One probing script: the recipe stem and family it probes, and ``TorchLinearProbe`` settings."""

    model: str  # recipe stem (``uni2_h``)
    family: str  # the recipe's family (``uni``): what ``paper_probe_params`` is asked with
    script: str  # path inside source.REPO at source.SCRIPTS_AT
    settings: dict[str, Setting]

    def values(self) -> dict:
        return {name: s.value for name, s in self.settings.items()}

    def overrides(self) -> dict:
        """This script's values that differ from the published ones."""
        return {k: v for k, v in self.values().items() if PAPER_PROBE_PARAMS[k] != v}


def _script(model: str, family: str, path: str, *, batch: int, adam: int, factor: int, lr: float = 5e-5,
            weight_decay: float = 1e-5) -> ProbeScript:
    """``batch``: the ``batch_size = 8`` line (``num_epochs``, then the early-stop patience follow);
    ``adam``: the ``optim.Adam`` line; ``factor``: ReduceLROnPlateau's ``factor=`` line (patience, min_lr follow)."""
    return ProbeScript(model, family, f"{PROBE_DIR}/{path}", dict(
        lr=Setting(lr, adam), weight_decay=Setting(weight_decay, adam), batch_size=Setting(8, batch),
        max_epochs=Setting(100, batch + 1), patience=Setting(15, batch + 2), lr_factor=Setting(0.5, factor),
        lr_patience=Setting(3, factor + 1), min_lr=Setting(1e-7, factor + 2)))


PROBE_SCRIPTS: tuple[ProbeScript, ...] = (
    _script("virchow", "virchow", "Virchow/virchow.py", batch=94, adam=123, factor=127),
    _script("virchow2", "virchow", "Virchow2/virchow2.py", batch=92, adam=121, factor=125),
    _script("uni", "uni", "uni/uni.py", batch=91, adam=120, factor=124),
    _script("uni2_h", "uni", "uni2-h/uni2-h.py", batch=102, adam=131, factor=135),
    _script("gigapath", "gigapath", "prov-gigapath/prov-gigapath.py", batch=90, adam=119, factor=123,
            lr=1e-3, weight_decay=1e-4),
    _script("hoptimus0", "hoptimus", "h-optimus-0/hoptimus0.py", batch=94, adam=134, factor=138),
    _script("hoptimus1", "hoptimus", "h-optimus-1/hoptimus1.py", batch=81, adam=109, factor=113),
)
PAPER_SCRIPT_PARAMS_BY_FAMILY = {s.family: s.overrides() for s in PROBE_SCRIPTS if s.overrides()}
PAPER_SCRIPT_OVERRIDES = PAPER_SCRIPT_PARAMS_BY_FAMILY["gigapath"]  # prov-gigapath/prov-gigapath.py


def paper_probe_params(family: str | None) -> dict:
    """The ``torch_linear`` overrides the paper's script for this recipe family used ({} = the defaults)."""
    return dict(PAPER_SCRIPT_PARAMS_BY_FAMILY.get(family or "", {}))
