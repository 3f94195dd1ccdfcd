"""The shape of the analysis package: what each module holds, and what importing it costs."""
import subprocess
import sys

import pytest

import analysis

from .conftest import ROOT


def test_reading_an_experiment_file_loads_no_pandas():
    """The sweeps driver reads prunesweep.yaml through analysis.experiment_file before it analyses."""
    code = "import analysis.experiment_file, sys; assert 'pandas' not in sys.modules, 'pandas'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name, module", sorted(analysis._EXPORTS.items()))
def test_every_lazy_export_is_its_modules_own(name, module):
    value = getattr(analysis, name)
    assert value is getattr(getattr(analysis, module), name)
    assert getattr(value, "__module__", f"analysis.{module}") == f"analysis.{module}"


def test_each_module_holds_what_its_name_says():
    from analysis import completeness, experiment_file, legacy, load

    rules = {"final_results", "is_complete", "complete_results", "diverged", "healthy", "completion"}
    assert rules <= set(vars(completeness))
    assert {"NotAnExperiment", "read_experiment_file", "read_config"} <= set(vars(experiment_file))
    assert callable(legacy.read_tune_results) and callable(load.load_experiment)
    # load reads; the rules and the experiment file are no longer its own (nor re-exported from it)
    for moved in ("final_results", "is_complete", "healthy", "completion", "read_experiment_file", "read_config",
                  "NotAnExperiment", "_read_tune_results"):
        assert not hasattr(load, moved), moved
    assert set(analysis._MODULES) >= {"completeness", "experiment_file", "legacy", "computed"}
