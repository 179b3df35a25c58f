pytest_plugins = ["tests.peers.network", "tests.peers.smtp"]
