"""shoal.registry.Registry: the one registry type, its duplicate policy and its errors."""

from __future__ import annotations

import pytest

from shoal.registry import Registry, UnknownNameError, origin


def _scorer(values):
    return values


def test_register_lookup_and_listing() -> None:
    scorers = Registry[object]("outlier scorer")
    assert scorers.register("knn", _scorer) is _scorer
    scorers.decorator("lof")(len)
    assert scorers["knn"] is _scorer and "lof" in scorers and "nope" not in scorers
    assert scorers.names() == ["knn", "lof"] == list(scorers) and len(scorers) == 2
    assert scorers.get("nope") is None


def test_the_same_code_again_is_accepted_other_code_under_a_taken_name_is_not() -> None:
    scorers = Registry[object]("outlier scorer")
    scorers.register("knn", _scorer)
    scorers.register("knn", _scorer)  # a module imported again (Streamlit reruns) is fine
    with pytest.raises(ValueError, match="outlier scorer 'knn' is already registered by .*_scorer"):
        scorers.register("knn", lambda values: values)
    assert scorers["knn"] is _scorer


def test_unknown_names_list_the_registered_ones() -> None:
    kinds = Registry[object]("job kind")
    kinds.register("embed", _scorer)
    with pytest.raises(
        UnknownNameError, match="unknown job kind 'emb'; registered: embed"
    ) as caught:
        kinds["emb"]
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)
    kinds.remove("embed")
    kinds.remove("never-there")
    assert kinds.names() == []


def test_origin_of_a_record_is_the_function_it_wraps() -> None:
    class Spec:
        function = staticmethod(_scorer)

    assert origin(Spec()) == origin(_scorer) == f"{__name__}._scorer"
