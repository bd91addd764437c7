current_basedir = None


def basedir():
    """The extension folder while one of its scripts is being loaded, else the webui's."""
    return current_basedir or "."
