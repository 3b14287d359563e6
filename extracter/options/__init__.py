"""The option files' schema (:mod:`extracter.options.schema`): ``options/*.yml`` loaded, checked once against every
component they configure (architectures, datasets, losses, metrics, the inference options of ``val``) and completed
with derived values and BasicSR's paths, for training and testing."""
