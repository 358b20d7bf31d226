def pytest_configure(config):
    # The tests here carry @pytest.mark.timeout; declare the marker when pytest-timeout is not
    # installed so that it is not an unknown-marker warning (which filterwarnings turns into an
    # error). Their subprocess has its own time limit either way.
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): time limit (pytest-timeout)")
