_ui_settings = []


def on_ui_settings(callback) -> None:
    _ui_settings.append(callback)


def ui_settings_callback() -> None:
    for callback in list(_ui_settings):
        callback()


def clear_callbacks() -> None:
    _ui_settings.clear()
