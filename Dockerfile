# Three stages from one file:
#   wheel: builds the project's wheel; the images below install that wheel, never the source tree,
#          so they run exactly what a user gets from `pip install m2kt-*.whl` (migrations included).
#   broker (default target): the broker only; the agents' ML stack is not installed (it never imports it).
#          It includes boto3 (the `s3` extra), for blobs on an object store (M2KT_BLOB_URL=s3://...).
#   agents: the teacher and student agents with torch (CPU build, pinned in constraints.txt).
# Both images run as uid 10001 from /data, a directory that user owns; the agents' data
# directories exist in the image with that owner, so fresh named volumes mounted there inherit it.
FROM python:3.11-slim AS wheel
ENV PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY m2kt ./m2kt
COPY broker ./broker
COPY teacher_agent ./teacher_agent
COPY student_agent ./student_agent
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /dist /dist
RUN useradd --system --uid 10001 --create-home --home-dir /home/m2kt m2kt \
 && mkdir -p /data && chown m2kt:m2kt /data
WORKDIR /data

FROM base AS agents
RUN pip install --no-cache-dir -c /tmp/constraints.txt \
      --extra-index-url https://download.pytorch.org/whl/cpu "$(ls /dist/m2kt-*.whl)[ml]" \
 && mkdir -p /data/teacher /data/student && chown -R m2kt:m2kt /data
USER m2kt
ENV M2KT_TEACHER_WORKDIR=/data/teacher M2KT_STUDENT_STATE_DIR=/data/student
CMD ["m2kt-student", "--help"]

FROM base AS broker
RUN pip install --no-cache-dir -c /tmp/constraints.txt "$(ls /dist/m2kt-*.whl)[s3]"
USER m2kt
ENV M2KT_DATA_DIR=/data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz').status != 200)"
CMD ["m2kt-broker", "serve", "--host", "0.0.0.0", "--port", "8080"]
