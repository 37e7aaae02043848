"""Where overlay hosts come from: the config file or etcd."""
