"""The names the ParaView side shares: its views, the reader's rank modes, the layout's four views and the
array each view colours by when none is asked for. Plain constants: the plugin, its scripts (once the plugin
is loaded) and the launcher all read them from here."""

VIEWS = ("network", "trajectory", "filters", "feature_maps", "field", "rank_field")
LAYOUT = ("network", "field", "filters", "trajectory")  # `tview paraview` and `tview render --view layout`
RANK_MODES = ("one", "all", "mean", "spread", "std")  # one rank; each rank a block; mean, max-min, std across ranks
REDUCED = ("mean", "spread", "std")  # the modes that reduce across ranks
DEFAULT_ARRAY = {"network": "act_channel_zero_frac", "trajectory": "log_step", "filters": "weight",
                 "feature_maps": "activation", "field": "grad_norm"}
# a rank x step field's statistic when none is named: one measured on each rank before DDP's all-reduce, which
# differs between ranks (grad_norm is the same on every rank of a DDP run), else grad_norm (a run without DDP)
RANK_FIELD_ARRAYS = ("local_grad_norm", "grad_norm")
# the network view's camera: straight at the x-y plane its slabs lie on, as ParaView's default camera (down -z, +y up)
NETWORK_CAMERA = {"direction": (0.0, 0.0, -1.0), "view_up": (0.0, 1.0, 0.0)}


def rank_field_array(available: list[str]) -> str:
    """The statistic a rank x step field shows when none is named (of the `available` ones)."""
    return next((name for name in RANK_FIELD_ARRAYS if name in available), RANK_FIELD_ARRAYS[-1])


def network_colour(available: list[str]) -> str | None:
    """The statistic a plain File > Open colours the network by: DEFAULT_ARRAY's (a sentinel recorded on every
    recorded step, the first included, on every layer), else the first of the `available` ones."""
    return DEFAULT_ARRAY["network"] if DEFAULT_ARRAY["network"] in available else next(iter(available), None)
