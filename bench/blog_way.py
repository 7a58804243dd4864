"""The AMD blog's way of downscaling one time, as its notebook code does it, for comparison.

One process per time: import earth2studio, delete any existing output, load the package
with ``CorrDiffTaiwan.load_model`` (which unzips it on every load), fetch, call the model,
write with ``ZarrBackend``. Only the data source and package location differ from the
blog: a local input file through earth2studio's ``DataArrayFile`` and a local package
directory instead of GFS and NGC, so the comparison runs offline. The number of steps is
set on the model so both sides do the same sampler work.

    python bench/blog_way.py 2024-07-24T12:00 --samples 4 --package DIR --input FILE --output OUT

``--marks FILE`` (for ``bench/startup.py``) adds timing only: the wall clock after the
imports, after loading, reading, inference and writing, and the seconds spent unzipping
inside ``load_model``; the blog's steps themselves are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import zipfile
from collections import OrderedDict

import numpy as np
import pandas as pd
import torch
from earth2studio.data import DataArrayFile, prep_data_array
from earth2studio.io import ZarrBackend
from earth2studio.models.auto import Package
from earth2studio.models.dx import CorrDiffTaiwan
from earth2studio.utils.coords import map_coords, split_coords

IMPORTED = time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("time")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--package", required=True, help="directory with the package zip")
    parser.add_argument("--input", required=True, help="DataArray file (time, variable, lat, lon)")
    parser.add_argument("--output", required=True, help="Zarr store to (re)create")
    parser.add_argument("--marks", help="write phase times (JSON) here; timing only")
    args = parser.parse_args()
    marks = {"imports": IMPORTED, "extract": 0.0}
    if args.marks:
        unzip = zipfile.ZipFile.extractall

        def timed_unzip(*a: object, **k: object) -> None:
            start = time.perf_counter()
            unzip(*a, **k)  # type: ignore[arg-type]
            marks["extract"] += time.perf_counter() - start

        zipfile.ZipFile.extractall = timed_unzip  # type: ignore[method-assign,assignment]

    starting_datetime = pd.to_datetime(np.datetime64(args.time)).to_pydatetime()
    if os.path.exists(args.output):  # the blog removes an existing output without asking
        shutil.rmtree(args.output)
    io = ZarrBackend(args.output)

    data_source = DataArrayFile(args.input)
    model = CorrDiffTaiwan.load_model(Package(args.package))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.number_of_samples = args.samples
    model.number_of_steps = args.steps
    model.seed = 0
    marks["load"] = time.time()

    input_data = data_source([starting_datetime], model.input_coords()["variable"])
    x, coords = prep_data_array(input_data, device=device)
    x, coords = map_coords(x, coords, model.input_coords())
    marks["read"] = time.time()

    output_coords = model.output_coords(model.input_coords())
    total_coords = OrderedDict(
        {
            "time": coords["time"],
            "sample": output_coords["sample"],
            "lat": output_coords["lat"],
            "lon": output_coords["lon"],
        }
    )
    io.add_array(total_coords, output_coords["variable"])
    x, coords = model(x, coords)
    if device.type == "cuda":
        torch.cuda.synchronize()
    marks["inference"] = time.time()
    io.write(*split_coords(x, coords))
    marks["write"] = time.time()
    if args.marks:
        with open(args.marks, "w") as handle:
            json.dump(marks, handle)


if __name__ == "__main__":
    main()
