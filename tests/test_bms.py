import numpy as np
import pytest
import torch

from searchspace.pooling import PoolingSpace, resnet20_space
from supernet.bms import (
    MixtureConfig, MixtureOfSuperNets, apply_factors, balance_factors, balanced_partition, kl_to_uniform,
    softmax_rows, temperature_at, train_mixture,
)
from supernet.networks import ModelSpec, build_supernet
from supernet.training import TrainConfig, train

TINY = PoolingSpace(name="tiny", widths=(4, 4, 8, 8, 8), num_downsamples=2)  # C(4,2) = 6 configs


def tiny_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + 2 * (x[:, 0, :, :4].mean((1, 2)) > 0).long()
    return torch.utils.data.TensorDataset(x, y)


@pytest.mark.parametrize("temperature", [1.0, 10.0, 100.0])
def test_balancing_makes_supernet_marginals_uniform(temperature):
    rng = np.random.default_rng(0)
    for m in (2, 4, 8):
        scores = rng.uniform(0.2, 0.9, size=(36, m))
        scores[:, 0] += 0.3  # one supernet looks best for everyone: the failure balancing prevents
        p = softmax_rows(temperature * scores)
        assert kl_to_uniform(p.mean(0)) > 1e-4
        q = apply_factors(p, balance_factors(p, tol=1e-4))
        assert kl_to_uniform(q.mean(0)) < 1e-4
        np.testing.assert_allclose(q.mean(0), np.full(m, 1 / m), atol=0.01)
        np.testing.assert_allclose(q.sum(1), 1.0)


def test_temperature_rises_linearly_from_one_to_t_max():
    temps = [temperature_at(e, 11, 100.0) for e in range(11)]
    assert temps[0] == 1.0 and temps[-1] == 100.0
    np.testing.assert_allclose(np.diff(temps), 9.9)


def test_mixture_with_one_supernet_equals_the_single_supernet_step_for_step():
    space, data = TINY, tiny_data()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=5)
    torch.manual_seed(cfg.seed)
    single = build_supernet(space, ModelSpec(1, 4))
    torch.manual_seed(cfg.seed)
    mixture = MixtureOfSuperNets(space, ModelSpec(1, 4), MixtureConfig(num_supernets=1))
    paths_single, paths_mixture = [], []
    train(single, data, cfg, choose_path=lambda rng: paths_single.append(single.sample_active(rng)), progress=False)
    original = mixture.supernets[0].set_active
    mixture.supernets[0].set_active = lambda c: (paths_mixture.append(c), original(c))[1]
    train_mixture(mixture, data, tiny_data(seed=1), cfg, progress=False)
    assert paths_single == paths_mixture and len(paths_single) == 3 * 6
    for key, value in single.state_dict().items():
        torch.testing.assert_close(mixture.supernets[0].state_dict()[key], value, rtol=0, atol=0)


def test_mixture_training_learns_scores_and_spreads_steps():
    space, data = TINY, tiny_data()
    torch.manual_seed(0)
    mixture = MixtureOfSuperNets(space, ModelSpec(1, 4), MixtureConfig(num_supernets=2, t_max=50.0))
    history = train_mixture(mixture, data, tiny_data(seed=1), TrainConfig(epochs=4, batch_size=16, seed=0), progress=False)
    scores = mixture.scores.numpy()
    assert not np.allclose(scores, 1.0)  # EMA updates happened
    assert (scores <= 1.0).all() and (scores >= 0.0).all()
    steps = np.array([h["steps_per_supernet"] for h in history.epochs]).sum(0)
    assert steps.sum() == 4 * 6 and steps.min() >= 6  # both supernets trained
    p = mixture.assignment()
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert kl_to_uniform(p.mean(0)) < 1e-4
    assert history.epochs[-1]["temperature"] == 50.0
    config = space.config(3)
    mixture.set_active(config)
    assert mixture.active_member == int(np.argmax(p[3])) and mixture.active == config
    exported = mixture.export_active().eval()
    mixture.eval()
    x = data.tensors[0][:4]
    torch.testing.assert_close(exported(x), mixture(x))


def test_scores_use_a_validation_batch_of_the_score_batch_size(monkeypatch):
    import supernet.bms as bms

    sizes = []
    real = bms.validation_accuracy

    def recording(model, x, y, amp):
        sizes.append(len(x))
        return real(model, x, y, amp)

    monkeypatch.setattr(bms, "validation_accuracy", recording)
    for score_batch, want in ((None, 16), (4, 4)):
        sizes.clear()
        torch.manual_seed(0)
        mixture = MixtureOfSuperNets(TINY, ModelSpec(1, 4), MixtureConfig(num_supernets=2, score_batch_size=score_batch))
        train_mixture(mixture, tiny_data(), tiny_data(seed=1), TrainConfig(epochs=1, batch_size=16), progress=False)
        assert sizes == [want] * 6  # one scored batch per training step (96 images / 16)


def test_balanced_partition_groups_similar_items_in_equal_groups():
    # Two blocks of mutually similar items, shuffled.
    order = np.random.default_rng(1).permutation(12)
    labels = (order < 6).astype(int)
    sim = np.where(labels[:, None] == labels[None, :], 0.9, -0.2)
    np.fill_diagonal(sim, 1.0)
    groups = np.array(balanced_partition(sim, 2))
    assert sorted(np.bincount(groups)) == [6, 6]
    assert len(set(zip(groups, labels))) == 2  # groups coincide with the blocks
    assert sorted(np.bincount(balanced_partition(sim, 5), minlength=5)) == [2, 2, 2, 3, 3]


def test_gm_grouping_fixes_balanced_groups_after_warmup():
    torch.manual_seed(0)
    mixture = MixtureOfSuperNets(TINY, ModelSpec(1, 4), MixtureConfig(num_supernets=2, grouping="gm", gm_warmup_fraction=0.5, gm_batches=2))
    train_mixture(mixture, tiny_data(), tiny_data(seed=1), TrainConfig(epochs=2, batch_size=16), progress=False)
    groups = mixture.fixed_group.numpy()
    assert sorted(np.bincount(groups, minlength=2)) == [3, 3]
    np.testing.assert_array_equal(mixture.assignment().argmax(1), groups)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_supernets=0), r"'num_supernets' \(M\): expected an integer >= 1"),
        (dict(t_max=0.5), "must not go below 1"),
        (dict(grouping="kmeans"), "'grouping'"),
        (dict(score_batch_size=0), r"'score_batch_size': expected an integer >= 1 or None, got 0"),
    ],
)
def test_bad_mixture_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixtureConfig(**kwargs)


def test_more_supernets_than_configurations():
    with pytest.raises(ValueError, match="7 supernets for 6 configurations"):
        MixtureOfSuperNets(TINY, ModelSpec(1, 4), MixtureConfig(num_supernets=7))
    MixtureConfig(num_supernets=36).check_space(resnet20_space())
