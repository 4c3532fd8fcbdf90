"""Each distillation loss against values computed independently (numpy, by the textbook formula),
zero for identical inputs, and the direction its gradient pushes the student."""

import math

import numpy as np
import pytest
import torch

from edgeslim.compress import losses as L
from edgeslim.compress.schedule import Schedule, scheduled


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_kl(p, q):
    return float((p * (np.log(p) - np.log(q))).sum(-1).mean())


def t(x):
    return torch.tensor(np.asarray(x), dtype=torch.float32)


# --------------------------------------------------------------------------------------- logits

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
Q = np.array([[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]])


def test_soft_kl_of_known_distributions():
    # logits = log-probabilities, so softmax at T=1 gives back P and Q exactly
    got = L.soft_kl(t(np.log(Q)), t(np.log(P)), temperature=1.0)
    assert float(got) == pytest.approx(np_kl(P, Q), rel=1e-5)


def test_soft_kl_temperature_softens_and_scales_by_t_squared():
    temp = 3.0
    p_t, q_t = np_softmax(np.log(P) / temp), np_softmax(np.log(Q) / temp)
    got = L.soft_kl(t(np.log(Q)), t(np.log(P)), temperature=temp)
    assert float(got) == pytest.approx(np_kl(p_t, q_t) * temp**2, rel=1e-5)


def test_soft_kl_is_zero_for_identical_logits():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert float(L.soft_kl(logits, logits.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_soft_kl_gradient_moves_student_towards_teacher():
    student = t(np.log(Q)).requires_grad_()
    L.soft_kl(student, t(np.log(P)), 1.0).backward()
    # d KL / d student_logits = (q - p) / batch: the student's logit falls where it over-predicts
    expected = (Q - P) / len(P)
    np.testing.assert_allclose(student.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_logit_kd_mixes_soft_and_hard_terms_by_alpha():
    labels = np.array([0, 2])
    q_logits = np.log(Q)
    ce = float(-np.log(Q[np.arange(2), labels]).mean())
    alpha, temp = 0.3, 2.0
    soft = np_kl(np_softmax(np.log(P) / temp), np_softmax(q_logits / temp)) * temp**2
    got = L.logit_kd_loss(t(q_logits), t(np.log(P)), torch.tensor(labels), temp, alpha)
    assert float(got) == pytest.approx(alpha * soft + (1 - alpha) * ce, rel=1e-5)


def test_logit_kd_on_unlabeled_rows_is_soft_only():
    labels = torch.tensor([L.IGNORE_INDEX, L.IGNORE_INDEX])
    got = L.logit_kd_loss(t(np.log(Q)), t(np.log(P)), labels, 1.0, alpha=0.2)
    assert float(got) == pytest.approx(np_kl(P, Q), rel=1e-5)


# ------------------------------------------------------------------------------------ schedules


def test_schedules():
    assert Schedule(kind="constant", start=2.0).at(0.7) == 2.0
    linear = Schedule(kind="linear", start=4.0, end=1.0)
    assert [linear.at(f) for f in (0.0, 0.5, 1.0)] == [4.0, 2.5, 1.0]
    two = Schedule(kind="two-phase", start=0.9, end=0.1, switch=0.25)
    assert [two.at(f) for f in (0.0, 0.24, 0.25, 1.0)] == [0.9, 0.9, 0.1, 0.1]
    assert scheduled(1.5, 0.3) == 1.5


def test_schedule_needs_an_end():
    with pytest.raises(ValueError, match="needs 'end'"):
        Schedule(kind="linear", start=1.0)


# ---------------------------------------------------------------------------------- hidden states

RNG = np.random.default_rng(0)
HS = RNG.normal(size=(2, 3, 4))
HT = RNG.normal(size=(2, 3, 4))
MASK = np.array([[1, 1, 1], [1, 1, 0]])


def test_hidden_mse_over_real_tokens():
    diffs = [((HS[b, i] - HT[b, i]) ** 2) for b in range(2) for i in range(3) if MASK[b, i]]
    expected = float(np.mean(np.concatenate(diffs)))
    got = L.hidden_loss(t(HS), t(HT), torch.tensor(MASK), "mse")
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_hidden_cosine_over_real_tokens():
    cos = [1 - HS[b, i] @ HT[b, i] / np.linalg.norm(HS[b, i]) / np.linalg.norm(HT[b, i])
           for b in range(2) for i in range(3) if MASK[b, i]]
    got = L.hidden_loss(t(HS), t(HT), torch.tensor(MASK), "cosine")
    assert float(got) == pytest.approx(float(np.mean(cos)), rel=1e-5)
    assert float(L.hidden_loss(t(HS), t(HS), None, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(L.hidden_loss(t(HS), t(-HS), None, "cosine")) == pytest.approx(2.0, abs=1e-6)


def test_hidden_projection_maps_student_width_to_teacher_width():
    narrow = t(HS[..., :2])
    proj = torch.nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [0, 0], [0, 0]]))
    padded = np.concatenate([HS[..., :2], np.zeros((2, 3, 2))], -1)
    expected = float(((padded - HT) ** 2).mean())
    loss = L.hidden_loss(narrow, t(HT), None, "mse", proj)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0  # the projection learns


def test_hidden_mse_is_zero_for_identical_states():
    assert float(L.hidden_loss(t(HS), t(HS), torch.tensor(MASK), "mse")) == 0.0


# ---------------------------------------------------------------------------------- attention


def _attn(seed, heads):
    return np_softmax(np.random.default_rng(seed).normal(size=(2, heads, 3, 3)))


def test_attention_kl_of_known_maps():
    s, tt = _attn(1, 2), _attn(2, 2)
    rows = [(tt[b, h, i] * np.log(tt[b, h, i] / s[b, h, i])).sum()
            for b in range(2) for h in range(2) for i in range(3) if MASK[b, i]]
    got = L.attention_loss(t(s), t(tt), torch.tensor(MASK), "kl")
    assert float(got) == pytest.approx(float(np.mean(rows)), rel=1e-4)
    assert float(L.attention_loss(t(s), t(s), None, "kl")) == pytest.approx(0.0, abs=1e-6)


def test_attention_heads_are_averaged_when_counts_differ():
    s, tt = _attn(3, 2), _attn(4, 4)
    s_avg, t_avg = s.mean(1), tt.mean(1)
    expected = float(((s_avg - t_avg) ** 2).mean())
    assert float(L.attention_loss(t(s), t(tt), None, "mse")) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------- relations

EMB_T = RNG.normal(size=(5, 6))
EMB_S = RNG.normal(size=(5, 3))


def np_smooth_l1(a, b):
    d = np.abs(a - b)
    return float(np.where(d < 1, 0.5 * d**2, d - 0.5).mean())


def test_rkd_distance_against_numpy():
    def norm_dist(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        off = ~np.eye(len(x), dtype=bool)
        return (d / d[off].mean())[off]

    got = L.rkd_distance_loss(t(EMB_S), t(EMB_T))
    assert float(got) == pytest.approx(np_smooth_l1(norm_dist(EMB_S), norm_dist(EMB_T)), rel=1e-4)


def test_rkd_distance_is_zero_for_a_scaled_copy():
    assert float(L.rkd_distance_loss(t(EMB_T * 3.0), t(EMB_T))) == pytest.approx(0.0, abs=1e-6)


def test_rkd_angle_against_numpy_triplets():
    def angles(x):
        n = len(x)
        out = np.zeros((n, n, n))
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    a, b = x[i] - x[j], x[k] - x[j]
                    na, nb = np.linalg.norm(a), np.linalg.norm(b)
                    out[j, i, k] = 0.0 if na == 0 or nb == 0 else a @ b / na / nb
        return out.ravel()

    got = L.rkd_angle_loss(t(EMB_S), t(EMB_T))
    assert float(got) == pytest.approx(np_smooth_l1(angles(EMB_S), angles(EMB_T)), rel=1e-4)
    rotation, _ = np.linalg.qr(RNG.normal(size=(6, 6)))  # angles survive rotation and scaling
    assert float(L.rkd_angle_loss(t(2.0 * EMB_T @ rotation), t(EMB_T))) == pytest.approx(0.0, abs=1e-5)


def test_similarity_matrix_loss_against_numpy():
    def sim(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x @ x.T

    expected = float(((sim(EMB_S) - sim(EMB_T)) ** 2).mean())
    assert float(L.similarity_loss(t(EMB_S), t(EMB_T))) == pytest.approx(expected, rel=1e-5)
    assert float(L.similarity_loss(t(EMB_T * 5), t(EMB_T))) == pytest.approx(0.0, abs=1e-6)


def test_unknown_relation_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown relation loss"):
        L.relation_loss(t(EMB_S), t(EMB_T), "triangle")


# ---------------------------------------------------------------------------------- causal LM

V = 6
LOG_S = RNG.normal(size=(2, 3, V))
LOG_T = RNG.normal(size=(2, 3, V))


def _masked_token_mean(values):
    return float(np.mean([values[b, i] for b in range(2) for i in range(3) if MASK[b, i]]))


def _per_token_kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


def test_forward_and_reverse_kl_per_token():
    p, q = np_softmax(LOG_T), np_softmax(LOG_S)
    mask = torch.tensor(MASK)
    fwd = L.token_divergence(t(LOG_S), t(LOG_T), mask, "forward_kl")
    rev = L.token_divergence(t(LOG_S), t(LOG_T), mask, "reverse_kl")
    assert float(fwd) == pytest.approx(_masked_token_mean(_per_token_kl(p, q)), rel=1e-5)
    assert float(rev) == pytest.approx(_masked_token_mean(_per_token_kl(q, p)), rel=1e-5)
    assert float(fwd) != pytest.approx(float(rev), rel=1e-3)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalised_jsd(beta):
    p, q = np_softmax(LOG_T), np_softmax(LOG_S)
    m = beta * p + (1 - beta) * q
    expected = beta * _per_token_kl(p, m) + (1 - beta) * _per_token_kl(q, m)
    got = L.token_divergence(t(LOG_S), t(LOG_T), torch.tensor(MASK), "jsd", beta=beta)
    assert float(got) == pytest.approx(_masked_token_mean(expected), rel=1e-5)


def test_jsd_half_is_symmetric_and_bounded_by_log2():
    ab = L.token_divergence(t(LOG_S), t(LOG_T), None, "jsd", beta=0.5)
    ba = L.token_divergence(t(LOG_T), t(LOG_S), None, "jsd", beta=0.5)
    assert float(ab) == pytest.approx(float(ba), rel=1e-5)
    assert 0 < float(ab) < math.log(2)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_token_losses_are_zero_for_identical_logits(kind):
    assert float(L.token_divergence(t(LOG_T), t(LOG_T), None, kind)) == pytest.approx(0.0, abs=1e-6)


def _top_k_args(logits, k, temperature=1.0):
    """What the teacher cache keeps: top-k logits, their ids and the full log-normaliser at T."""
    values, indices = t(logits).topk(k, dim=-1)
    return {"topk_values": values, "topk_indices": indices, "topk_lse": torch.logsumexp(t(logits) / temperature, -1)}


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_keeps_true_probabilities_and_a_rest_bucket(temperature):
    """Top-k KL = KL over the teacher's k tokens plus one bucket for the rest, with both sides'
    full-vocabulary probabilities (computed here with numpy), not renormalised over the k."""
    k = 3
    p_t, p_s = np_softmax(LOG_T / temperature), np_softmax(LOG_S / temperature)
    idx = np.argsort(-LOG_T, axis=-1)[..., :k]
    t_k, s_k = np.take_along_axis(p_t, idx, -1), np.take_along_axis(p_s, idx, -1)
    t_b = np.concatenate([t_k, 1 - t_k.sum(-1, keepdims=True)], -1)
    s_b = np.concatenate([s_k, 1 - s_k.sum(-1, keepdims=True)], -1)
    expected = _masked_token_mean(_per_token_kl(t_b, s_b)) * temperature**2
    got = L.token_divergence(t(LOG_S), None, torch.tensor(MASK), "forward_kl", temperature=temperature,
                             **_top_k_args(LOG_T, k, temperature))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    renormalised = _masked_token_mean(_per_token_kl(t_k / t_k.sum(-1, keepdims=True), s_k / s_k.sum(-1, keepdims=True)))
    assert abs(float(got) - renormalised * temperature**2) > 1e-3  # the old, biased loss differs


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_top_k_loss_is_zero_for_the_teacher_itself(kind):
    got = L.token_divergence(t(LOG_T), None, None, kind, temperature=2.0, **_top_k_args(LOG_T, 2, 2.0))
    assert float(got) == pytest.approx(0.0, abs=1e-6)


def test_top_k_moves_student_mass_off_tokens_outside_the_k():
    """The student's logit on a token outside the teacher's top-k gets a positive gradient (descent
    lowers it): the rest bucket sees it. Renormalising over the k left that logit without gradient."""
    teacher = torch.tensor([[[4.0, 3.0, 0.0, 0.0]]])
    student = torch.tensor([[[0.0, 0.0, 0.0, 5.0]]], requires_grad=True)
    L.token_divergence(student, None, None, "forward_kl", **_top_k_args(teacher, 2)).backward()
    assert float(student.grad[0, 0, 3]) > 0 and float(student.grad[0, 0, 0]) < 0


def test_top_k_of_the_whole_vocabulary_equals_the_full_loss():
    full = L.token_divergence(t(LOG_S), t(LOG_T), None, "reverse_kl", temperature=2.0)
    topk = L.token_divergence(t(LOG_S), None, None, "reverse_kl", temperature=2.0, **_top_k_args(LOG_T, V, 2.0))
    assert float(topk) == pytest.approx(float(full), rel=1e-4)


def test_token_kl_gradient_raises_the_teachers_favourite_token():
    student = torch.zeros(1, 1, V, requires_grad=True)
    teacher = torch.zeros(1, 1, V)
    teacher[0, 0, 2] = 3.0
    L.token_divergence(student, teacher, None, "forward_kl").backward()
    grad = student.grad[0, 0]
    assert grad[2] < 0 and bool((grad[[0, 1, 3, 4, 5]] > 0).all())  # descent raises logit 2, lowers the rest


def test_bad_token_loss_arguments():
    with pytest.raises(ValueError, match="beta"):
        L.token_divergence(t(LOG_S), t(LOG_T), None, "jsd", beta=1.0)
    with pytest.raises(ValueError, match="unknown token loss"):
        L.token_divergence(t(LOG_S), t(LOG_T), None, "tvd")
