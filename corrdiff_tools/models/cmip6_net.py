"""CorrDiffCMIP6's nets: earth2studio's loader and preprocessing, our noise.

earth2studio 0.19's ``CorrDiffCMIP6`` (weights on Hugging Face,
``nvidia/corrdiff-cmip6-era5``) is the generic package layout with a preprocessing of its
own, loaded here through its own ``load_model`` and kept as it is, because it replays
what the nets were trained on: each input variable at three input lead times (-24, 0,
+24 h around the initialisation time, 12:00 UTC), the sea-ice and snow cover smoothed
into one field, the invariants, the cosine of the solar zenith angle and the hour of day
at the *valid* time (with the training's quirk of the hour written into the last
invariant's slot and normalised by that invariant's statistics), reflect padding in
latitude and circular padding in longitude, and its channel order. Its postprocessing
crops the padding, denormalises, clamps the non-negative variables and flips latitude
back. Output lead times run from -12 to +11 hours around the initialisation time.

What :class:`Cmip6Sampler` does instead of its ``_forward``, and why:

* Its ``preprocess_input`` writes the smoothed sea-ice and snow cover (``siconc`` +
  ``snc``) into the ``siconc`` channel of the tensor it is *given*, through a transposed
  view. ``__call__`` hands every output lead time a view of the same input, so the
  second lead time reads a ``siconc`` already smoothed and summed with ``snc`` once, the
  third twice, and so on; a caller's own array is changed too. Ours preprocesses a copy,
  so every lead time and sample sees the inputs as given (tests pin both).
* earth2studio draws sample ``j`` from seed ``seed + j`` at every time, output lead time
  and batch element, so the members of every hour of every day share their noise: a
  member's hourly series is not independent from one hour to the next, and two days
  downscaled in one call get the same noise pattern. Ours is the run tool's
  per-(time, lead, sample) seed (:func:`corrdiff_tools.downscale.sample_seed`).
* Without a seed it draws one from numpy's global generator (unrecorded). Ours is
  always given.
* Sea-ice and snow cover are blank (NaN) in CMIP6 where there is none (over land, over
  sea). Its preprocessing reads blanks as 0 when it sums the two into the smoothed cover
  (``nan_to_num``), but leaves ``snc``'s own channel as it is, so the nets get NaN and
  every output comes out NaN. Ours fills both with 0, which is what the smoothing
  already takes them for (``models.cmip6.BLANK_INPUTS``; tests pin both).
* On CUDA it runs both nets under bfloat16 autocast, on a CPU in float32. Ours does the
  same by default (``--precision auto``: ``GPU_PRECISION`` in ``models.cmip6``), with
  the autocast round the backbones rather than round whole sampler calls, as for
  CorrDiff Taiwan (:func:`corrdiff_tools.model.autocast_network`), and fp32 or fp16
  on request.

With the seeds ``seed + j`` and one sample per call, ours reproduces earth2studio's own
call bitwise on a CPU (``tests/test_cmip6.py``). The conditioning (its
``preprocess_input``) and the denormalisation (its ``postprocess_output``) are
earth2studio's; the nets are run by the same code as the generic packages'
(:class:`~corrdiff_tools.models.generic.GenericSampler`), on the padded grid.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from corrdiff_tools.models.cmip6 import INPUT_LEADS, family
from corrdiff_tools.models.generic import GenericSampler, check_wiring, load_checked
from corrdiff_tools.sampling import SamplerSettings

if TYPE_CHECKING:
    import torch
    import xarray as xr
    from earth2studio.models.dx.corrdiff_cmip6 import CorrDiffCMIP6


def load(
    spec: str | Path,
    device: str | None = None,
    shown: str | None = None,
    output_leads: tuple[int, ...] = (-12,),
) -> CorrDiffCMIP6:
    """Load a CorrDiffCMIP6 package through earth2studio's ``CorrDiffCMIP6.load_model``.

    ``spec`` is a folder or an address (as :func:`corrdiff_tools.models.generic.load`);
    the layout and the checkpoints' classes are checked first, the nets' channels
    against the files after (:func:`~corrdiff_tools.models.generic.check_wiring`, with
    CorrDiffCMIP6's three lead times and two time features per input).
    """
    from corrdiff_tools.imports import import_alone

    # Alone: earth2studio.models.dx's __init__ imports every diagnostic model (30 s).
    family = import_alone("earth2studio.models.dx.corrdiff_cmip6").CorrDiffCMIP6
    shown = shown or f"package {spec}"
    leads = np.array([np.timedelta64(hours, "h") for hours in output_leads])
    loader = partial(family.load_model, output_lead_times=leads, device=device or "cpu")
    model = load_checked(spec, loader, shown)
    count = len(model.input_variables)
    words = f"{count} input variable(s) at {len(INPUT_LEADS)} lead times + 2 time features"
    check_wiring(model, shown, (len(INPUT_LEADS) * count + 2, words))
    return model  # type: ignore[no-any-return]


class Cmip6Sampler(GenericSampler):
    """CorrDiffCMIP6's forward pass with per-sample seeded noise (see the module docstring).

    Its inputs are (lead, variable, lat, lon): the package's variables at the input lead
    times :data:`INPUT_LEADS` of one initialisation time, on its input grid.
    """

    def __init__(self, model: CorrDiffCMIP6, settings: SamplerSettings | None = None) -> None:
        super().__init__(model, settings)
        self.declaration = family(self.declaration)

    @property
    def lat(self) -> np.ndarray:
        """Output latitudes, 2-D (H, W): the package's axes meshed."""
        return np.meshgrid(self._axes()[0], self._axes()[1], indexing="ij")[0]

    @property
    def lon(self) -> np.ndarray:
        """Output longitudes, 2-D (H, W)."""
        return np.meshgrid(self._axes()[0], self._axes()[1], indexing="ij")[1]

    def _axes(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.asarray(self.model.lat_output_numpy, dtype="float64"),
            np.asarray(self.model.lon_output_numpy, dtype="float64"),
        )

    def align(self, array: xr.DataArray) -> np.ndarray:
        """The inputs from a (lead_time, variable, lat, lon) DataArray, by name and lead.

        Each input lead time is taken by its label (hours, or timedelta64), each
        variable by name and each grid point by coordinate
        (:meth:`GenericSampler.align`).
        """
        if "lead_time" not in array.dims:
            raise ValueError(
                f"inputs have dims {tuple(array.dims)}; CorrDiffCMIP6 reads (lead_time, "
                f"variable, lat, lon) at lead times {', '.join(map(str, INPUT_LEADS))} h"
            )
        labels = np.asarray(array["lead_time"].values)
        hours = (
            labels.astype("timedelta64[h]").astype(int)
            if np.issubdtype(labels.dtype, np.timedelta64)
            else labels.astype(int)
        )
        missing = [lead for lead in INPUT_LEADS if lead not in hours.tolist()]
        if missing:
            raise ValueError(
                f"inputs lack lead time(s) {', '.join(map(str, missing))} h: CorrDiffCMIP6 "
                f"reads {', '.join(map(str, INPUT_LEADS))} h around the initialisation time"
            )
        position = hours.tolist()
        return np.stack(
            [
                super(Cmip6Sampler, self).align(array.isel(lead_time=position.index(lead)))
                for lead in INPUT_LEADS
            ]
        )

    def condition(
        self, inputs: np.ndarray | xr.DataArray, valid_time: datetime | None = None
    ) -> torch.Tensor:
        """earth2studio's ``preprocess_input`` at the valid time: (1, channels, H', W').

        ``inputs`` is (lead, variable, lat, lon) in :data:`INPUT_LEADS` and the package's
        variable order (or a DataArray, taken by name: :meth:`align`); the result lies on
        the padded grid the nets see.
        """
        import torch
        import xarray as xr

        if valid_time is None:
            raise ValueError("CorrDiffCMIP6 needs the valid time (its time features)")
        if isinstance(inputs, xr.DataArray):
            inputs = self.align(inputs)
        inputs = np.asarray(inputs, dtype="float32")
        grid = self.model.input_coords()
        shape = (
            len(INPUT_LEADS),
            len(self.model.input_variables),
            np.size(grid["lat"]),
            np.size(grid["lon"]),
        )
        if inputs.shape != shape:
            raise ValueError(
                f"inputs have shape {inputs.shape}; CorrDiffCMIP6 reads {shape}: (lead time "
                f"{INPUT_LEADS}, variable ({', '.join(self.model.input_variables)}), lat, lon)"
            )
        # A copy: earth2studio's preprocess_input smooths the sea-ice cover into the
        # tensor it is given (see the module docstring). Blank sea-ice and snow cover is
        # no cover: earth2studio reads it so for the smoothed field, but passes snc's
        # blanks on to the nets, where one NaN makes every output NaN.
        inputs = inputs.copy()
        for name in self.declaration.blank_inputs:
            channel = inputs[:, self.model.input_variables.index(name)]
            channel[np.isnan(channel)] = 0.0
        x = torch.tensor(inputs[None], device=self.device)
        with torch.inference_mode():
            condition = self.model.preprocess_input(x, valid_time).to(torch.float32)
        return condition.to(memory_format=torch.channels_last)
