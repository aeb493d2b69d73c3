from tests.events.live import live_app_fixture

__all__ = ["live_app_fixture"]
