"""Default uCTRL configuration: every setting and its one default (``get_config``); dataset
configs import it (through the repository's ``configs/default.py``) and override only what
is theirs (data, image size, architecture and width, batch, steps, encoder steps, logging
intervals). Part of the package, so that ``uctrl_jax.load`` completes an old run's
``config.json`` with the settings added since (``loading.complete_config``) wherever
uctrl_jax is installed.

The settings that decide whether the closed loop reconstructs anything (the resize-conv
decoder, cosine sample-wise terms on batch means, a cosine learning-rate decay) and the
multi-view recipe that made the features match the encoder-only TCR baseline were measured
on Fashion-MNIST only: docs/experiments.md#what-chose-the-defaults and docs/recipes.md.
Values the paper does not state (λ₁, λ₂, ε², number of views, d) are provisional
(docs/method.md#the-game). What this config has run on its own:
docs/experiments.md#what-the-shipped-configs-have-run.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # --- data (uctrl_jax/input_pipeline.py, uctrl_jax/augment.py) ---
  config.data = ml_collections.ConfigDict()
  config.data.name = "fashion_mnist"  # tfds name, or "image_folder:PATH", "npz:PATH"
  # The split training reads; slices hold data out: "train[:90%]" (npz/image_folder slices
  # are taken after a fixed shuffle: uctrl_jax/datasets/splits.py).
  config.data.train_split = "train"
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds default
  # Let tfds download a dataset missing from data_dir (needs network). Off, so an
  # offline run fails at once; fashion_mnist is prepared from the Debian files anyway.
  config.data.download = False
  config.data.image_size = 28  # S: images and views are S×S; None keeps the stored size
  # Augmented views per image (V ≥ 1). Several views give the encoder something to be
  # invariant to (docs/recipes.md: V = 8 with the views' mean target; Fashion-MNIST's
  # default trains 4, as good in fewer minutes: docs/minutes_to_quality.md).
  config.data.num_views = 8
  config.data.shuffle_buffer = 10_000
  config.data.prefetch = 2
  config.data.cache = True  # keep this process's decoded shard in memory
  config.data.augment = ml_collections.ConfigDict()
  config.data.augment.crop_scale = (0.3, 1.0)
  config.data.augment.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
  config.data.augment.flip = True
  config.data.augment.jitter_prob = 0.8
  config.data.augment.brightness = 0.4
  config.data.augment.contrast = 0.4
  config.data.augment.saturation = 0.4
  config.data.augment.hue = 0.1
  config.data.augment.grayscale_prob = 0.2

  # --- model (uctrl_jax/models.py) ---
  config.model = ml_collections.ConfigDict()
  config.model.encoder = "dcgan"  # "dcgan" | "resnet18"
  config.model.decoder = "dcgan"  # "dcgan" | "resnet18"
  config.model.feature_dim = 128  # d
  # "resize_conv" (nearest 2× + 3×3 conv) | "pixel_shuffle" | "conv_transpose" (CTRL's; slow
  # on XLA:CPU). The other two draw per-pixel noise: docs/experiments.md#what-chose-the-defaults.
  config.model.upsample = "resize_conv"
  config.model.width = 64  # base channel count w
  config.model.encoder_depth = 0  # dcgan: extra 3×3 convs after each strided conv (CTRL: 0)
  config.model.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (rate terms stay float32)

  # --- objective (uctrl_jax/rate_reduction.py, docs/method.md#coding-rates, #the-game) ---
  config.loss = ml_collections.ConfigDict()
  # "uctrl" | "ctrl_binary" | "ctrl_multi"; encoder-only baselines: "tcr" (EMP-SSL) | "simclr"
  # Generative baselines with the same f and g: "autoencoder" (pixel MSE) | "vae" (ELBO).
  config.loss.mode = "uctrl"
  config.loss.eps_sq = 0.5  # CTRL's `eps`
  # λ₁: the invariance weight against R's strength (set by ε²) is the features' main lever
  # (docs/recipes.md: 30 best at ε² = 0.5 for the encoder-only TCR and the game alike).
  config.loss.lambda_aug = 30.0
  # λ₂: 30 over 10 raised the reconstructions' consistency and PSNR, features no worse
  # (docs/recipes.md).
  config.loss.lambda_self = 30.0
  # "cosine" 1 − cos | "exact" ΔR(u, v) (docs/method.md#sample-wise-distance). With exact the
  # encoder sends ẑ orthogonal to z: nothing is reconstructed (docs/experiments.md's sweep).
  config.loss.sample_distance = "cosine"
  config.loss.sample_reduction = (
    "mean"  # "sum" (Σᵢ, docs/method.md#the-game) | "mean" (λ independent of n)
  )
  # The augmentation term compares: "image" each view with f(x) | "mean" the image and the
  # views (half weight each) with the normalised mean of the views' features (EMP-SSL's).
  config.loss.aug_target = "mean"
  config.loss.temperature = 0.2  # "simclr" only: NT-Xent's T
  # Expansion over the views too: ½ (R(Z) + mean_v R(Z_v)) in place of R(Z) (uctrl only).
  # Without it, at λ₁ = 30 the features stay weak (docs/recipes.md, the game's screen).
  config.loss.rate_on_views = True
  config.loss.num_classes = 10  # ctrl_multi only (supervised)
  # "vae" only: σ² of the Gaussian likelihood N(x | g(z), σ² I) on [-1, 1] pixels, fixed: the
  # smallest whose prior samples are garments, not texture
  # (docs/experiments.md#the-vae-baselines-likelihood-variance).
  config.loss.vae_sigma_sq = 0.2
  # Ablations only (experiments/ablations.py): weights of R(Z) and ΔR(Z, Ẑ) in both players'
  # objectives; 1 is the method.
  config.loss.rate_weight = 1.0
  config.loss.delta_weight = 1.0

  # --- devices (uctrl_jax/sharding.py): one (data, model) mesh over every device of every
  # process; the global batch is split over `data`. -1: all devices not on `model`.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.model = 1  # parameter sharding (FSDP-style): extension point, must be 1

  # --- training (uctrl_jax/train.py) ---
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 512  # global, over all processes and devices
  config.train.num_steps = 2_000
  config.train.encoder_steps = 1
  config.train.encoder_lr = 1e-3
  config.train.decoder_lr = 5e-4
  config.train.encoder_b1 = 0.9  # Adam β₁ of each player (DCGAN's 0.5 for the decoder)
  config.train.decoder_b1 = 0.5
  config.train.b2 = 0.999
  # "cosine" (over num_steps) | "constant". A constant rate drifts back towards decoder
  # fooling; cosine decay kept improving (docs/experiments.md#what-chose-the-defaults).
  config.train.schedule = "cosine"
  config.train.warmup_steps = 0
  config.train.scale_lr_by_batch = False  # lr × global batch / 256
  # A resume whose num_steps differs from the checkpointed run's under the "cosine"
  # schedule changes its learning-rate curve: refused unless True (then a warning).
  config.train.allow_lr_curve_change = False
  config.train.encoder_bn_on_xhat = "running"  # BN statistics for f(X̂): "running" | "batch"
  # The encoder in the decoder step: "batch" statistics of [X; views] (views encoded too) |
  # "running" statistics, as evaluation runs it (X only: the views' term is constant in η).
  config.train.encoder_bn_in_decoder_step = "running"
  # Threads of the host's BLAS/LAPACK during training (jaxlib's CPU Cholesky runs in scipy's
  # OpenBLAS; its spinning threads slow XLA's: host_blas.limit_host_blas). None: as found.
  config.train.host_blas_threads = 1
  config.train.log_every = 50
  config.train.image_every = 500
  config.train.checkpoint_every = 500
  config.train.eval_every = 1_000
  config.train.max_to_keep = 3
  # Non-finite objective terms / gradient norms / state (train_and_evaluate): "stop" raises
  # naming them; "rollback" restores the last checkpoint and goes on with the next batches,
  # at most max_rollbacks times.
  config.train.on_nonfinite = "stop"
  config.train.max_rollbacks = 3
  # The health monitor's warnings (uctrl_jax/health.py, docs/method.md#known-failures):
  # collapse when R(Z) falls below collapse_fraction of its running maximum; fooling when
  # cos(z, ẑ) > fooling_cos (below the cos of the decoders that drew noise) while the
  # reconstruction MSE is above fooling_mse_fraction of its first value.
  # Each failure is said when it starts, while it lasts (with a count: remind_every logged
  # steps in, then after twice as many each time) and when it ends: after clear_after
  # logged steps in a row without it, so that a condition flickering around its threshold
  # is one episode, not a warning at each return.
  config.train.health = ml_collections.ConfigDict(
    dict(
      collapse_fraction=0.5,
      fooling_cos=0.75,
      fooling_mse_fraction=0.9,
      remind_every=10,
      clear_after=3,
    )
  )

  # --- evaluation (uctrl_jax/evaluators/, evaluate.py; docs/method.md#evaluation-protocols) ---
  # Each evaluator's block holds keyword arguments of its module's `evaluate`.
  config.evals = ml_collections.ConfigDict()
  config.evals.names = (
    "knn",
    "linear_probe",
    "nearest_subspace",
    "clustering",
    "reconstruction",
    "conditional_generation",
    "fid",
    "structure",
    "judge",
  )
  # The first N examples of each split (None: all) for evaluate.py.
  config.evals.max_train_examples = ml_collections.config_dict.placeholder(int)
  config.evals.max_test_examples = ml_collections.config_dict.placeholder(int)
  # Run by train.py every config.train.eval_every steps and at the end, logged as eval/...:
  # the cheap evaluators on a subset (names=() turns it off).
  config.evals.during_training = ml_collections.ConfigDict(
    dict(names=("knn", "reconstruction"), max_train_examples=10_000, max_test_examples=2_000)
  )
  # The splits evaluators read (slices too: "train[:90%]" / "train[90%:]"); train_split
  # is the kNN's / linear probe's reference set, test_split the one scored.
  config.evals.train_split = "train"
  config.evals.test_split = "test"
  config.evals.batch_size = 500  # rows per encode/decode call
  config.evals.baselines = True  # evaluate.py: classifiers on raw pixels and the initial encoder
  # evaluate.py: the baselines' metrics (fixed by the data, the evaluators' settings and, for
  # the initial encoder, the model and seed) computed once and read back (eval_cache.py).
  config.evals.cache_baselines = True
  # evaluate.py: work directories of other runs on the same data (e.g. "tcr"/"simclr" runs of
  # the same minutes) whose features go through the same classifiers, one column each.
  config.evals.compare_workdirs = ()
  config.evals.figures = True  # evaluate.py: WORKDIR/figures/*.png
  config.evals.knn = ml_collections.ConfigDict(dict(k=20, temperature=0.07))  # solo-learn
  config.evals.linear_probe = ml_collections.ConfigDict(dict(steps=500, lr=0.05, weight_decay=1e-4))
  config.evals.nearest_subspace = ml_collections.ConfigDict(dict(n_components=10))  # CTRL
  config.evals.clustering = ml_collections.ConfigDict(
    dict(
      num_clusters=ml_collections.config_dict.placeholder(int),  # None: number of classes
      seed=0,
      num_iters=100,
      num_restarts=10,
      mcr2=True,
      eps_sq=ml_collections.config_dict.placeholder(float),  # None: config.loss.eps_sq
      mcr2_steps=200,
      mcr2_lr=0.01,
      mcr2_temperature=0.1,
      mcr2_max_examples=5000,
      mcr2_max_dim=128,
    )
  )
  config.evals.reconstruction = ml_collections.ConfigDict(dict(k=20, temperature=0.07))
  config.evals.conditional_generation = ml_collections.ConfigDict(
    dict(
      use_labels=False,
      num_clusters=ml_collections.config_dict.placeholder(int),
      seed=0,
      num_clusters_without_labels=10,  # k-means clusters when the data have no classes
      num_components=8,
      num_samples=10,
    )
  )
  # A TensorFlow SavedModel of Inception-v3 pool features; None skips FID (never downloaded).
  config.evals.fid = ml_collections.ConfigDict(
    dict(inception_path=ml_collections.config_dict.placeholder(str))
  )
  config.evals.structure = ml_collections.ConfigDict()  # no options
  # A small CNN classifier of the dataset, trained once per training set and cached, whose
  # logits and features score reconstructions and samples (docs/method.md#evaluation-protocols).
  # Its sampler is conditional_generation's (same clusters, components, seed).
  config.evals.judge = ml_collections.ConfigDict(
    dict(
      # None: $UCTRL_JAX_JUDGE_CACHE, else ~/.cache/uctrl_jax/judges: per user, not per run
      # (a judge depends on the data only; a workdir's would retrain for every run).
      cache_dir=ml_collections.config_dict.placeholder(str),
      # Images per compared set; None: as many as test images (FD is biased at small n).
      num_samples=ml_collections.config_dict.placeholder(int),
      k=3,  # precision/recall's neighbourhood (Kynkäänniemi et al. 2019)
      # How the judge trains (uctrl_jax/judge_network.py; part of its cache key): sized for ≥ 91%
      # on Fashion-MNIST in minutes on 2 CPU cores.
      recipe=ml_collections.ConfigDict(
        dict(
          widths=(32, 64),
          hidden=128,
          epochs=3,
          batch_size=128,
          lr=1e-3,
          shift=0,
          flip=False,
          seed=0,
        )
      ),
    )
  )
  return config
