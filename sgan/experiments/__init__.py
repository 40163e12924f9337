"""The experiments on a generated benchmark, above the pipeline: the synthetic VOC-layout benchmark
(synthetic), the disjoint classification set that stands in for ImageNet (pretrain_set), and the steps
that use them: pretrain (the backbone on that set), demo (the whole method on the benchmark) and study
(the demo over several training seeds). The pipeline's step table (sgan.pipeline.STEPS) names these
steps' modules; nothing below this package imports it."""
