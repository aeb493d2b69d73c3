"""The operator console: the admin API's live views (queries.py, models.py), the feed
that pushes `admin.counts` to connected admins (feed.py), and the page itself (static/),
served at /admin. See docs/subsystems/console.md."""
