"""``train_net.py --list WHAT``: every name an unknown-name error could have meant."""
from .setup import config_keys, default_config, load_config

LIST_CHOICES = ("datasets", "meta-architectures", "config-keys", "clip-models")


def list_names(what, config_file=""):
    """Lines to print for ``--list what``: sorted names (config keys with their values).

    ``config-keys`` shows ``config_file``'s values when one is given, else the defaults.
    """
    if what == "datasets":
        from detectron2.data import DatasetCatalog

        return sorted(DatasetCatalog.list())
    if what == "meta-architectures":
        from detectron2.modeling import META_ARCH_REGISTRY

        return sorted(name for name, _ in META_ARCH_REGISTRY)
    if what == "config-keys":
        cfg = load_config(config_file) if config_file else default_config()
        lines = []
        for key in config_keys(cfg):
            value = cfg
            for part in key.split("."):
                value = value[part]
            lines.append(f"{key} = {value!r}")
        return lines
    if what == "clip-models":
        import open_clip

        return sorted(open_clip.list_models())
    raise ValueError(f"--list takes one of {', '.join(LIST_CHOICES)}")
