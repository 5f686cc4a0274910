"""Django settings, read from the environment through small helpers (Healthchecks style).

Every setting has a safe default: with nothing set, MergeHub runs on SQLite in ``<repo>/data``
with the django-q2 ORM broker. Production sets SECRET_KEY, ALLOWED_HOSTS, DATABASE_URL and
REDIS_URL (see docs/deploy.md).
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean; use true or false")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None


def env_list(name: str, default: list[str], separators: str = ",") -> list[str]:
    """Split on any of ``separators``; blank items are dropped."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    for sep in separators[1:]:
        value = value.replace(sep, separators[0])
    return [item.strip() for item in value.split(separators[0]) if item.strip()]


# --- core -------------------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)
MERGEHUB_DATA_DIR = Path(env_str("MERGEHUB_DATA_DIR", str(BASE_DIR / "data"))).resolve()
# The block catalog, shared with the `mergehub` command line, which reads the same variable;
# empty: MERGEHUB_DATA_DIR/catalog, the command line's default too (mergehub/engine/locations.py).
MERGEHUB_CATALOG = env_str("MERGEHUB_CATALOG", "")


def secret_key_file(path: Path) -> str:
    """The key stored in ``path``, created (random, mode 0600, atomically) on first use, so an
    unconfigured install never runs on a published key. Web and workers share it through the
    data directory (django-q2 signs queued tasks with it)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(50))
    try:
        os.link(tmp, path)  # fails if another process won the race: then use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY", "") or secret_key_file(MERGEHUB_DATA_DIR / "secret_key")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from /static/ (no CDN)
    "django_q",
    "axes",
    "csp",
    "mergehub.jobs",
    "mergehub.accounts",
    "mergehub.registry",
    "mergehub.runs",
    "mergehub.evaluation",
    "mergehub.publishing",
    "mergehub.api",
    "mergehub.audit",
    "mergehub.reviews",
    "mergehub.ui",
    "mergehub.dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",  # above axes, so that the locked-out page gets the policy too
    "axes.middleware.AxesMiddleware",  # last, as axes requires: turns a lockout into its page
]

ROOT_URLCONF = "mergehub.urls"
WSGI_APPLICATION = "mergehub.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- storage ----------------------------------------------------------------------------------

# Checkpoint roots a site admin shares with *every* team (none by default). Each team also has
# its own folder, DATA_DIR/teams/<slug>/checkpoints, and the roots given to it alone in the
# admin (StorageRoot); see mergehub/registry/roots.py and docs/security.md.
MERGEHUB_CHECKPOINT_ROOTS = [
    Path(p) for p in env_list("MERGEHUB_CHECKPOINT_ROOTS", [], separators="," + os.pathsep)
]

DATABASE_URL = env_str("DATABASE_URL", "")
if not DATABASE_URL:
    MERGEHUB_DATA_DIR.mkdir(parents=True, exist_ok=True)  # SQLite cannot create its directory
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or f"sqlite:///{MERGEHUB_DATA_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web and worker processes write to the same file. WAL lets readers run beside the one
    # writer; IMMEDIATE transactions take the write lock at BEGIN, where SQLite waits for it
    # (busy timeout), instead of upgrading a read lock mid-transaction, where it cannot wait
    # and fails at once with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "timeout": env_int("SQLITE_BUSY_TIMEOUT", 30),
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- jobs (django-q2; see mergehub/jobs/dispatch.py and docs/deploy.md) --------------------------

MERGEHUB_WORKERS = env_int("MERGEHUB_WORKERS", 1)
MERGEHUB_JOB_TIMEOUT = env_int("MERGEHUB_JOB_TIMEOUT", 6 * 3600)  # seconds a job may run
MERGEHUB_HEARTBEAT_TIMEOUT = env_int("MERGEHUB_HEARTBEAT_TIMEOUT", 120)  # silence before the reaper
# The queues this site has (the merge form offers them) and the one this worker process serves.
MERGEHUB_QUEUES = env_list("MERGEHUB_QUEUES", ["cpu"])
MERGEHUB_QUEUE = env_str("MERGEHUB_QUEUE", "cpu")
if MERGEHUB_QUEUE not in MERGEHUB_QUEUES:
    MERGEHUB_QUEUES = [*MERGEHUB_QUEUES, MERGEHUB_QUEUE]
# A GPU-queue worker without CUDA fails its merges unless this allows them to run on the CPU.
MERGEHUB_GPU_FALLBACK_TO_CPU = env_bool("MERGEHUB_GPU_FALLBACK_TO_CPU", False)
# Block size (bytes) for indexing and planning; 0 = the engine's default (1 MiB).
MERGEHUB_BLOCK_SIZE = env_int("MERGEHUB_BLOCK_SIZE", 0)
REDIS_URL = env_str("REDIS_URL", "")

# --- getting the model out (docs/publishing.md) ---------------------------------------------------

# The Hugging Face Hub that "Push to the Hub" uploads to; empty: huggingface_hub's own default
# (its HF_ENDPOINT, else https://huggingface.co). A self-hosted Hub or a test server goes here.
MERGEHUB_HF_ENDPOINT = env_str("MERGEHUB_HF_ENDPOINT", "")

# --- evaluation (docs/evaluation.md) ------------------------------------------------------------

# Largest task file a team may upload or register (bytes).
MERGEHUB_TASK_MAX_BYTES = env_int("MERGEHUB_TASK_MAX_BYTES", 16 * 1024 * 1024)
# lm-evaluation-harness YAML can name any file on the worker as its data (and Python to run,
# which mergehub.scoring refuses), so such tasks are off unless the site trusts every team.
MERGEHUB_ALLOW_LM_EVAL_TASKS = env_bool("MERGEHUB_ALLOW_LM_EVAL_TASKS", False)
# Examples per task scored in one batch, and readable samples kept per result.
MERGEHUB_EVAL_BATCH_SIZE = env_int("MERGEHUB_EVAL_BATCH_SIZE", 64)
MERGEHUB_EVAL_SAMPLES = env_int("MERGEHUB_EVAL_SAMPLES", 12)

Q_CLUSTER = {
    "name": "mergehub",  # the site: signs queued tasks; the same for every queue
    "cluster_name": f"mergehub-{MERGEHUB_QUEUE}",  # this worker's queue (dispatch.cluster_name)
    "workers": MERGEHUB_WORKERS,
    "timeout": MERGEHUB_JOB_TIMEOUT,
    "retry": MERGEHUB_JOB_TIMEOUT + 600,  # must exceed timeout or tasks get delivered twice
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 500,
    "recycle": 50,
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = 0.5

# --- auth -------------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)

# --- login throttling (django-axes; mergehub/accounts/throttling.py) ---------------------------

# LOGIN_FAILURE_LIMIT failed logins for one username, or from one client address, lock logins
# for that username (from anywhere) and from that address (as anyone) until LOGIN_COOLOFF_MINUTES
# after the last failure; failures older than that are forgotten. Every login that calls
# authenticate() with the request is covered: /login/ and /admin/login/. A site admin lifts a
# lock early by deleting its "Access attempts" in the admin, or `manage.py axes_reset_username`.
# Failed API token authentications count the same way, per address and per token id
# (mergehub/api/throttling.py): the API then answers 429 with Retry-After.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login before any password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one locks
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"  # works on SQLite and PostgreSQL alike
# Not reset on success: with the address as a lock parameter, a success would wipe the failures
# from that address, so an attacker with an account of their own could reset their count.
AXES_RESET_ON_SUCCESS = False
# Tries during a lock are refused without extending it, so the time the page names holds.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "mergehub.accounts.throttling.lockout_response"
AXES_CLIENT_IP_CALLABLE = "mergehub.accounts.throttling.client_ip"
# Behind the TLS proxy the peer is the proxy: the client's address is the X-Forwarded-For entry
# the proxies appended (MERGEHUB_TRUSTED_PROXIES of them in a row). Never trusted otherwise.
MERGEHUB_TRUST_X_FORWARDED_FOR = env_bool("BEHIND_TLS_PROXY", False)
MERGEHUB_TRUSTED_PROXIES = max(env_int("TRUSTED_PROXY_COUNT", 1), 1)

# --- Content-Security-Policy (django-csp) ------------------------------------------------------

# Scripts only from this site (no inline code: static/js/app.js does the page glue). Styles also
# inline: Plotly and htmx add <style> elements and templates use style="" attributes. Images also
# from blob: URLs, through which Plotly's "Download plot as png" draws the chart.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}

# --- REST API (mergehub/api; docs/api.md) ------------------------------------------------------

# Token authentication only (no sessions, hence no CSRF): a token sees its team alone, with its
# user's current role there; changes need a read-write token too (mergehub/api/permissions.py).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["mergehub.api.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["mergehub.api.permissions.HasTeamToken"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "mergehub.api.base.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "mergehub.api.exceptions.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env_str("API_RATE_LIMIT", "1200/minute")},  # per user
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MergeHub API",
    "DESCRIPTION": "Budget-aware merging of LLM checkpoints. Authenticate with a team API token: "
                   "`Authorization: Bearer mh_…` (create one on your team's page).",
    "VERSION": "1",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and the docs page: for a token or a logged-in user.
    "SERVE_AUTHENTICATION": ["mergehub.api.authentication.BearerTokenAuthentication",
                             "rest_framework.authentication.SessionAuthentication"],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No validator badge: it is an image from validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- i18n, static -----------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed copies made by collectstatic; no hashed-name manifest, so pages (and tests)
    # render whether or not collectstatic has run.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
