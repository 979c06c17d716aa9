"""The checks of each numbered example's smoke-mode numbers (``results.json``) and the figures it
writes, shared by the script tests (tests/test_examples.py) and the notebook tests
(tests/test_docs.py, which executes the notebooks once to build the site)."""

from __future__ import annotations


def check_autoencoders(r, out):
    base = r["mean image"]
    for dim in (2, 16):
        sq, bern = r[f"{dim}-D, squared error"], r[f"{dim}-D, Bernoulli"]
        # each beats the mean image on the loss it was trained on (smoke, seeds 0-3, 2-D: 62-63 of 67.5; 183-191 of 206)
        assert sq["squared_error"] < 0.97 * base["squared_error"], (dim, sq, base)
        assert bern["bce_nats"] < 0.97 * base["bce_nats"], (dim, bern, base)
        # trained on cross-entropy, the better probabilities (smoke, 2,000 images: 45 nats or more; full: 12 and 2)
        assert bern["bce_nats"] < sq["bce_nats"] - (20 if r["train_images"] <= 2000 else 1), (dim, sq, bern)
        assert all(m["train_curve"][-1] < m["train_curve"][0] for m in (sq, bern)), (dim, sq, bern)
    for loss, key in (("squared error", "squared_error"), ("Bernoulli", "bce_nats")):
        assert r[f"16-D, {loss}"][key] < r[f"2-D, {loss}"][key], (loss, r)  # a bigger code reconstructs better
    return ["reconstructions.png", "codes.png", "interpolation.png"]


def check_generative_models(r, out):
    assert r["mixture_nats"] > r["single_gaussian_nats"] + 1.5, r  # eight blobs are no one Gaussian (~2.4 nats)
    assert abs(r["mixture_nats"] - r["true_density_nats"]) < 0.15, r  # EM found the eight blobs
    assert r["mmd2_after"] < r["mmd2_before"] / 20, r  # the generator learned from samples alone
    kde = r["kde_generator_nats"]
    assert max(kde) - min(kde) > 2, kde  # the KDE's score depends on the bandwidth ...
    assert 0 < kde.index(max(kde)) < len(kde) - 1, kde  # ... too narrow and too wide both score worse
    assert max(r["kde_data_nats"]) < r["true_density_nats"], r  # a KDE of the data itself falls short of the truth
    return ["samples.png", "densities.png", "scores.png"]


def check_monte_carlo(r, out):
    assert -0.7 < r["slope"] < -0.3, r["slope"]  # error ~ N^(-1/2)
    return ["points.png", "error.png"]


def check_kl_divergence(r, out):
    for key in ("pq", "qp"):
        mc, se = r[f"mc_kl_{key}"]
        assert abs(mc - r[f"kl_{key}"]) < 4 * se, (key, mc, se, r[f"kl_{key}"])
    assert r["kl_pq"] > 2 * r["kl_qp"]  # asymmetric
    assert abs(r["entropy_plus_kl"] - r["cross_entropy_mc"]) < 0.02
    assert abs(abs(r["reverse_fit"][0]) - 2) < 0.3 and r["reverse_fit"][1] < 1  # one mode
    assert abs(r["forward_fit"][0]) < 1e-9 and abs(r["forward_fit"][1] - 4.36**0.5) < 1e-9  # both
    return ["asymmetry.png", "fits.png"]


def check_elbo(r, out):
    assert r["max_identity_error"] < 1e-9
    # at a constant step size the KL ends at the noise of the gradients: 1e-5 to 0.05 (full run: 0.039)
    assert r["svi_kl_last"] < 0.1 and r["svi_kl_last"] < r["svi_kl_first"] / 500
    for q in r["jensen"]:  # Monte Carlo, r["jensen_draws"] draws of z ~ q per q
        (gap, gap_se), (lw, lw_se), (ml, ml_se) = q["gap"], q["log_mean_w"], q["mean_log_w"]
        assert gap >= -1e-12, q  # Jensen: the log of the mean weight is at least the mean of the log weights
        assert abs(gap - q["kl"]) < 4 * gap_se + 1e-9, q  # ... and the gap is KL(q || p(z|x))
        assert abs(lw - r["log_px"]) < 4 * lw_se + 1e-9, q  # E_q[w] = p(x) for every q
        assert abs(ml - q["elbo"]) < 4 * ml_se + 1e-9, q  # E_q[log w] = ELBO(q)
    assert sum(q["gap"][0] > 10 * q["gap"][1] for q in r["jensen"]) >= 2, r["jensen"]  # a gap, not noise
    return ["jensen.png", "identity.png", "svi.png"]


def check_reparam_vs_score(r, out):
    exact = r["exact_gradient"]
    for kind in ("reparameterised", "score function"):
        for mean, se in zip(r[kind]["mean"], r[kind]["se"]):
            assert abs(mean - exact) < 4 * se, (kind, mean, se)  # unbiased, N = reps draws
        var, n = r[kind]["variance"], r["n"]
        assert 0.4 < var[0] / var[-1] / (n[-1] / n[0]) < 2.5, (var, n)  # ~ 1/N from the first N to the last
    assert all(s > 10 * p for s, p in zip(r["score function"]["variance"], r["reparameterised"]["variance"]))
    return ["variance.png"]


def check_vae_in_pyro(r, out):
    tol = r["tolerance"]
    assert tol <= 1e-10, tol  # the tolerance of tests/objectives/ (Pyro's losses against the hand-written ones)
    same, pkg = r["same_draw"], r["package"]
    for name, e in [
        ("Trace_ELBO vs -log p(x|z) - log p(z) + log q(z|x)", same["trace_vs_monte_carlo"]),
        ("TraceMeanField_ELBO vs BCE + closed-form KL", same["mean_field_vs_closed_form"]),
        ("package trace ELBO vs Trace_ELBO", pkg["trace_vs_hand"]),
        ("package mean_field ELBO vs TraceMeanField_ELBO", pkg["mean_field_vs_hand"]),
        ("package training loss vs Trace_ELBO", pkg["training_loss_vs_hand"]),
    ]:  # equal on the same draws of z, in float64
        assert e["max_abs_per_image"] < tol and e["max_rel"] < tol, (name, e)
    assert same["min_kl_gap_per_image"] > 1e-3, same  # the two estimators really differ at each draw ...
    assert same["max_z_rebuilt_error"] < 1e-12, same  # ... and z is mu + sigma * randn from the seed
    assert pkg["training_loss_fast"], pkg  # fit's lean path, not Pyro's traces again
    e = r["expectation"]
    assert e["n"] >= 100 and abs(e["z_score"]) < 4, e  # both unbiased for -ELBO: within 4 standard errors
    assert 0 < e["trace_sd"] < e["closed_form_sd"], e  # a good guide: the Monte-Carlo KL cancels noise
    first, train, test = r["first_batch_loss"], r["train_loss"], r["test_loss"]
    assert len(train) == len(test) == r["epochs"], r
    assert first > 400 and train[-1] < train[0] < first and test[-1] < 250, (first, train, test)  # untrained: ~545
    return ["training.png", "images.png"]


def check_prior_sampling_fails(r, out):
    for model in ("latent2", "latent20"):
        prior, encoder = r["models"][model]["prior"], r["models"][model]["encoder"]
        for p, e in zip(prior, encoder):  # sampling from the prior estimates a larger NLL than the encoder
            assert p["mean"] > e["mean"] - 0.5, (model, p, e)
        assert prior[0]["mean"] > encoder[0]["mean"] + 1, (model, prior[0], encoder[0])  # K=1: clearly worse
        assert encoder[-1]["mean"] <= encoder[0]["mean"] and prior[-1]["mean"] <= prior[0]["mean"]
    return ["estimates.png"]


def check_autoencoder_vs_vae(r, out):
    # the VAE's codes are closer to N(0, I) than the autoencoder's
    assert r["VAE"]["kl_gaussian_fit_to_prior"] < r["autoencoder"]["kl_gaussian_fit_to_prior"], r
    return ["latents.png", "samples.png"]


def check_latent_space(r, out):
    # smoke-sized training is too short to order the latent sizes; check that all four learned
    for size in r["sizes"]:
        assert 0 < r[f"latent{size}"]["reconstruction_nats"] < 250, r  # untrained: ~545 nats
        assert r[f"latent{size}"]["test_neg_elbo"] < 250, r
    return ["manifold.png", "latents.png", "reconstructions.png", "explorer_path.png"]


def check_swap_components(r, out):
    variants = [k for k, v in r.items() if isinstance(v, dict)]
    assert len(variants) == 6, variants
    for name in variants:
        nll, elbo = r[name]["test_nll"][0], r[name]["test_neg_elbo"][0]
        assert nll <= elbo + 1e-6, (name, nll, elbo)  # log-mean-exp >= mean-log on the same draws
        if r[name]["likelihood_gives"] == "probability":
            assert 0 < nll < 260, (name, nll)  # a code length; untrained: ~545 nats
    assert r["continuous_bernoulli"]["test_nll"][0] < 0  # a density on binary pixels exceeds 1
    return ["nll.png", "samples.png"]


def check_conditional_vae(r, out):
    assert r["cvae_nll"][0] <= r["cvae_neg_elbo"][0]
    assert 0 < r["cvae_nll"][0] < r["baseline_nll"][0], r  # a latent beats independent pixels given x
    assert len(r["baseline_valid_curve"]) == len(r["cvae_valid_neg_elbo_curve"]) == r["epochs"]
    return ["completions.png", "curves.png"]


def check_vae_pixelcnn_gan(r, out):
    import math

    causal = r["causal"]  # d f_i / d x_j on a test digit: exactly 0 for j >= i, not for every j < i
    assert causal["max_abs_grad_future"] == 0 and causal["max_abs_grad_past"] > 0, causal
    assert r["window_max_abs_diff"] < 1e-4, r["window_max_abs_diff"]  # the sampler's window = a whole-image pass
    m = r["models"]
    vae, pixelcnn, gan = m["VAE"], m["PixelCNN"], m["GAN"]
    untrained, exact = r["PixelCNN_untrained_nll"], pixelcnn["test_nll"][0]
    assert 400 < untrained < 700, untrained  # near 784 log 2 = 543 nats
    assert math.isfinite(exact) and 0 < exact < min(untrained - 150, 300), (exact, untrained)  # smoke, seed 0: 128
    assert 0 < vae["test_nll"][0] <= r["VAE_test_neg_elbo"][0] + 1e-6, vae  # log-mean-exp >= mean-log, same draws
    assert gan["test_nll"] is None and gan["nll_kind"] is None, gan  # no likelihood, by design
    times = {name: model["seconds_per_64_samples"] for name, model in m.items()}
    assert min(times.values()) > 0 and times["PixelCNN"] > 10 * max(times["VAE"], times["GAN"]), times  # 784 passes
    for name, stats in (*m.items(), ("reference", r["reference"])):
        n = stats["samples"] if name in m else r["classifier"]["held_out_images"]
        assert len(stats["histogram"]) == 10 and sum(stats["histogram"]) == n, (name, stats)
        assert 1 <= stats["digits_covered"] <= 10 and -1e-9 <= stats["kl_to_uniform_nats"] <= math.log(10) + 1e-9
        assert abs(stats["kl_to_uniform_nats"] + stats["entropy_nats"] - math.log(10)) < 1e-9, (name, stats)
    assert r["classifier"]["accuracy"] > 0.7, r["classifier"]  # smoke, seed 0: 0.87 from 1,000 digits; guessing: 0.1
    ref = r["reference"]  # alternate test digits: both halves of the digit-sorted split hold every digit
    assert ref["digits_covered"] == 10 and ref["kl_to_uniform_nats"] < 0.05, ref
    return ["samples.png", "coverage.png", "causal.png"]


def check_plugins(r, out):
    expected = {"binomial": "model.likelihood", "laplace": "model.prior", "residual_mlp": "model.network"}
    assert r["registered"] == expected, r["registered"]
    kl = r["kl_check"]
    assert max(abs(z) for z in kl["z"]) < 4, (kl["z"], "N =", kl["samples"], "seed 0")  # 8 images
    for name, run in r["runs"].items():
        assert 0 < run["test_nll"][0] < 400, (name, run)  # untrained: ~545 nats
        recorded = out / name.replace(" ", "_") / "plugins.json"
        if recorded.parent.is_dir():  # (a run's folder; a full run's kept record has not its run folders)
            assert recorded.exists() == bool(run["plugins"]), name
    return ["kl_check.png", "nll.png"]


def check_beta_vae(r, out):
    one, four = r["betas"]["1"], r["betas"]["4"]
    assert four["kl_nats"] < one["kl_nats"], r  # a dearer KL buys a code with less information
    assert four["active_units"] <= one["active_units"], r
    for beta in (one, four):
        assert beta["neg_elbo"] == beta["reconstruction_nats"] + beta["kl_nats"] and beta["kl_nats"] > 0
    return ["tradeoff.png", "traversals.png"]


def check_own_images(r, out):
    assert r["images"] in (600, 10_000)  # smoke, full
    if (out / "my_images").is_dir():  # (a run's folder; a full run's kept record has not its pictures)
        assert len(list((out / "my_images").rglob("*.png"))) == r["images"]
        assert sorted(p.name for p in (out / "my_images").iterdir()) == [str(d) for d in range(10)]  # class folders
    for name, net in r["networks"].items():
        assert 0 < net["test_nll"][0] <= net["test_neg_elbo"][0] + 1e-6 < 480, (name, net)  # untrained: ~545 nats
    return ["nll.png", "pictures.png"]


def check_colour_images(r, out):
    import math

    assert r["images"] in (600, 10_000) and r["data_dim"] == 3 * 28 * 28  # smoke, full
    if (out / "colour_images").is_dir():  # (a run's folder; a full run's kept record has no pictures)
        assert len(list((out / "colour_images").rglob("*.png"))) == r["images"]
    assert 1 <= r["best_epoch"] <= r["epochs"], r
    assert r["floor_bits_per_dim"] == math.log2(5) and r["uniform_bits_per_dim"] == 8.0
    bits, nats = r["test_nll_bits_per_dim"], r["test_nll_nats"]
    assert abs(bits[0] - nats[0] / (r["data_dim"] * math.log(2))) < 1e-9  # NLL / (D ln 2)
    assert r["test_nll_bits_per_dim"][0] <= r["test_neg_elbo_bits_per_dim"][0] + 1e-9
    assert math.log2(5) < bits[0] < 9, r  # above the noise's entropy; untrained (seed 0): 10.05 bits/dim
    return ["pictures.png", "bits.png"]


def check_hierarchical_latents(r, out):
    m = r["models"]
    for name, model in m.items():
        kl = model["kl"]
        total = model["reconstruction_nats"] + kl["z2"] + kl["z1"]
        assert abs(total - model["neg_elbo"]) < 1e-3, (name, model)  # the terms of log_weights, on the same draws
        assert min(kl.values()) > -0.05 and 0 < model["reconstruction_nats"] < 300, (name, model)  # untrained: ~545
        assert all(len(curve) == len(r["stages"]) for curve in model["kl_curve"].values()), name
    chain, chain_cold = m["chain_warmup"], m["chain_no_warmup"]
    # without warm-up the chain's top layer keeps fewer units active (smoke, seeds 0-4: 7/3, 7/3, 4/2, 5/3, 6/1)
    assert chain["active_units"]["z2"] > chain_cold["active_units"]["z2"], (chain, chain_cold)
    for warm in ("warmup", "no_warmup"):  # x sees z2 directly with the skip: z2 carries more and decides more
        skip, plain = m[f"skip_{warm}"], m[f"chain_{warm}"]
        assert skip["kl"]["z2"] > plain["kl"]["z2"] and plain["kl"]["z2"] < plain["kl"]["z1"], (warm, skip, plain)
        assert skip["z2_share_of_sample_variance"] > plain["z2_share_of_sample_variance"] + 0.1, (warm, skip, plain)
    return ["samples.png", "active_units.png", "kl.png", "kl_curves.png"]


def check_discrete_latents(r, out):
    v = r["value"]
    assert v["max_difference"] < 1e-10, v  # the sum over c by hand = enum = Pyro's TraceEnum_ELBO, on one draw
    assert abs(v["z"]) < 4, v  # the enumerated estimates average to the closed-form ELBO
    est = r["estimators"]
    for name in ("enum", "trace"):  # unbiased: each of the 15 coordinates' means within 4.5 s.e. of the exact gradient
        assert est[name]["max_abs_z"] < 4.5, (name, est[name]["z"], "n =", r["estimates"], "seed 0")
    assert est["trace"]["variance"] > 10 * est["enum"]["variance"], est  # the score function's noise
    relaxed, straight = est["gumbel"]["by_temperature"], est["gumbel_st"]["by_temperature"]
    for rows in (relaxed, straight):
        assert rows[0]["max_abs_z"] > 10 and rows[0]["bias"] > 10 * rows[0]["bias_se"], rows[0]  # biased at tau = 1
        assert rows[-1]["bias"] < rows[0]["bias"] and rows[-1]["variance"] > 3 * rows[0]["variance"], rows
        assert all(row["variance"] < est["trace"]["variance"] for row in rows)
    # the plain relaxation's bias shrinks at every step of tau until the noise of the mean hides it (smoke, seed 0:
    # 3.9, 2.9, 1.7, 0.3 against noise floors 0.16, 0.24, 0.36, 0.41)
    biases = [(row["bias"], row["noise_floor"]) for row in relaxed]
    assert all(b[0] < a[0] or b[0] < 2 * b[1] for a, b in zip(biases, biases[1:])), biases
    m = r["mixture"]
    assert 0 < m["accuracy"] <= 1 and 0 <= m["nmi"] <= 1 and 1 <= m["clusters_used"] <= m["components"], m
    assert 0.3 < m["kmeans_accuracy"] < 0.7, m  # k-means on the pixels (benchmarks/results/kmeans_baseline.json)
    return ["estimates.png", "temperature.png", "components.png"]


def check_semi_supervised(r, out):
    import math

    labels, plan = r["labels"], r["plan"]
    assert labels["protocol"].startswith("offline") and "100 labels (10 per class)" in labels["protocol"], labels
    assert labels["labelled"] == labels["count"] == 100 and r["m2"]["run_summary_protocol"] == labels["protocol"]
    # each labelled image counted once an epoch: r appearances scaled by 1/r; the classification term alpha N / N_L / r
    assert abs(plan["batches"] * plan["labelled_per_batch"] * plan["labelled_scale"] - labels["labelled"]) < 1e-9
    expected = plan["alpha"] * labels["train_images"] / labels["labelled"] / plan["repeats"]
    assert abs(plan["class_scale"] - expected) < 1e-9, plan
    m2, alone = r["m2"], r["classifier_alone"]
    assert m2["test_error"] == m2["run_summary_test_error"], m2  # the notebook's error is the run's own report
    for model in (m2, alone):
        assert 0 <= model["test_error"] <= 1 and all(0 <= e <= 1 for e in model["per_class_error"]), model
    assert alone["train_error"] < 0.05 and alone["test_error"] < 0.6, alone  # fits its 100 images; guessing: 0.9
    assert 0 <= m2["y_share_of_sample_variance"] <= 1 and 0 <= m2["q_y_entropy_nats"] <= math.log(10) + 1e-9, m2
    return ["errors.png", "styles.png"]


CHECKS = {
    "01_autoencoders.py": check_autoencoders,
    "02_generative_models.py": check_generative_models,
    "03_kl_divergence.py": check_kl_divergence,
    "04_elbo.py": check_elbo,
    "05_monte_carlo.py": check_monte_carlo,
    "06_reparam_vs_score.py": check_reparam_vs_score,
    "07_vae_in_pyro.py": check_vae_in_pyro,
    "08_prior_sampling_fails.py": check_prior_sampling_fails,
    "09_autoencoder_vs_vae.py": check_autoencoder_vs_vae,
    "10_latent_space.py": check_latent_space,
    "11_swap_components.py": check_swap_components,
    "12_conditional_vae.py": check_conditional_vae,
    "13_vae_pixelcnn_gan.py": check_vae_pixelcnn_gan,
    "14_beta_vae.py": check_beta_vae,
    "15_plugins.py": check_plugins,
    "16_own_images.py": check_own_images,
    "17_colour_images.py": check_colour_images,
    "18_hierarchical_latents.py": check_hierarchical_latents,
    "19_discrete_latents.py": check_discrete_latents,
    "20_semi_supervised.py": check_semi_supervised,
}
