"""The generated sample streamed into the reference's binnings gives the in-memory separation
powers, and an evaluation of a sample larger than its reference keeps only as many features as the
reference."""

import numpy as np

from data_tools.shower_model import sample_incident_energies, simulate_showers
from pipeline.data.samples import ArraySample
from pipeline.evaluation import distortions
from pipeline.evaluation.observables import compute_observables
from pipeline.evaluation.runner import EvalOptions, evaluate_samples, separations, summarise
from pipeline.evaluation.separation import compare
from pipeline.evaluation.streamed_histograms import GeneratedHistograms
from pipeline.physics.geometry import load_geometry


def _sample(g, n: int, seed: int, name: str, distort=None) -> ArraySample:
    e = sample_incident_energies(n, seed)
    showers = simulate_showers(g, e, seed=seed)
    return ArraySample(showers if distort is None else distort(showers), e, g, name)


def test_streamed_histograms_equal_the_in_memory_separations():
    g = load_geometry("ds2")
    ref = compute_observables(_sample(g, 600, 1, "reference"))
    gen_sample = _sample(g, 900, 2, "generated", lambda s: distortions.smear_radial(s, g, 0.1))
    gen = compute_observables(gen_sample)
    hist = GeneratedHistograms(ref, 50)
    streamed = compute_observables(gen_sample, block_rows=128, on_block=hist.add,
                                   hlf_rows=np.arange(0, 900, 7))
    assert streamed.n == 900 and streamed.hlf.n == len(range(0, 900, 7))
    np.testing.assert_allclose(streamed.mean_layer_energy, gen.hlf.e_layer.mean(axis=0), rtol=1e-12)
    in_memory, seps = separations(gen, ref, 50), hist.separations()
    assert set(seps) == set(in_memory)
    for name, s in seps.items():
        assert np.array_equal(s.generated, in_memory[name].generated), name
        assert s.value == in_memory[name].value and s.floor == in_memory[name].floor, name
    assert summarise(seps) == summarise(in_memory)
    rows, binned = hist.energy_binned()
    gi = np.digitize(gen.hlf.e_inc, [1e4, 1e5])
    for k, (entry, b) in enumerate(zip(rows, binned)):
        sel = gi == k
        assert entry["n_generated"] == int(sel.sum())
        np.testing.assert_allclose(entry["response_generated"]["mean"],
                                   (gen.hlf.e_tot / gen.hlf.e_inc)[sel].mean(), rtol=1e-12)
        if b is not None:
            r_sel = np.digitize(ref.hlf.e_inc, [1e4, 1e5]) == k
            direct = compare(gen.hlf.observables(sel)["e_layer_10"][0],
                             ref.hlf.observables(r_sel)["e_layer_10"][0], "log", 50)
            assert b["e_layer_10"].value == direct.value


def test_a_larger_generated_sample_keeps_as_many_features_as_the_reference():
    g = load_geometry("ds2")
    ref, gen = _sample(g, 300, 1, "reference"), _sample(g, 1000, 2, "generated")
    opts = EvalOptions(classifiers=("high",), physics_distances=False, plots=False, progress=False,
                       block_rows=256)
    opts.classifier.max_epochs = 2
    report = evaluate_samples(gen, ref, opts)
    assert report["generated_features_kept"] == 300
    assert report["separation_power"]["summary"]["etot_einc"]["n_generated"] == 1000
    assert sum(b["n_generated"] for b in report["energy_bins"]) == 1000
    small = evaluate_samples(_sample(g, 250, 2, "generated"), ref, opts)
    assert small["generated_features_kept"] == 250


def test_voxel_spectrum_groups_are_bounded_whatever_the_size(monkeypatch):
    from pipeline.evaluation import observables

    g = load_geometry("ds2")
    sample = _sample(g, 640, 3, "generated")
    small = compute_observables(sample)
    monkeypatch.setattr(observables, "MAX_VOXEL_GROUPS", 4)
    bounded = compute_observables(sample)
    assert len(small.voxel_groups) == 20 and len(bounded.voxel_groups) == 4  # groups of 32, then 160
    assert np.array_equal(small.voxel_counts, bounded.voxel_counts)
