"""cxrbench.evaluate.metadata: index columns joined to predictions by image_id, from a cache or an index."""

import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.evaluate.metadata import (
    align_metadata,
    default_variables,
    metadata_columns,
    read_metadata,
    subgroup_arrays,
)


def test_cache_and_index_give_the_same_columns(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=20)
    from_cache = read_metadata(cache, ["sex", "age", "view"])
    from_index = read_metadata(cache / "index.parquet", ["sex", "age", "view"])
    assert list(from_cache.columns) == ["image_id", "patient_id", "split", "sex", "age", "view"]
    pd.testing.assert_frame_equal(from_cache.reset_index(drop=True), from_index.reset_index(drop=True))
    assert default_variables(metadata_columns(cache)) == ["sex", "age", "view", "dataset"]
    with pytest.raises(InputError, match="did you mean 'age'"):
        read_metadata(cache, ["agee"])
    with pytest.raises(InputError, match="no index found"):
        read_metadata(tmp_path / "nothing", ["sex"])


def test_align_follows_the_given_ids_and_refuses_missing_or_duplicate_ones():
    meta = pd.DataFrame({"image_id": ["a", "b", "c"], "sex": ["F", None, "M"], "age": [30.0, 65.0, np.nan]})
    out = align_metadata(np.array(["c", "a"]), meta, where="m")
    assert list(out["image_id"]) == ["c", "a"]
    groups = subgroup_arrays(align_metadata(["a", "b", "c"], meta, "m"), ["sex", "age"], age_edges=(40, 60))
    assert list(groups["sex"]) == ["F", "unknown", "M"] and list(groups["age"]) == ["<40", ">=60", "unknown"]
    with pytest.raises(InputError, match=r"1 predicted image\(s\) are not in the metadata \(e.g. 'z'\)"):
        align_metadata(["a", "z"], meta, "m")
    with pytest.raises(InputError, match="'a' appears more than once"):
        align_metadata(["a"], pd.concat([meta, meta.iloc[:1]]), "m")
