# Two images from one file:
#   broker (default target): the broker only; the agents' ML stack is not installed (it never imports it).
#   agents: the teacher and student agents with torch (CPU build, pinned in constraints.txt).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY m2kt ./m2kt
COPY broker ./broker
COPY teacher_agent ./teacher_agent
COPY student_agent ./student_agent
COPY migrations ./migrations
RUN useradd --system --uid 10001 m2kt && mkdir -p /data && chown m2kt /data

FROM base AS agents
RUN pip install --no-cache-dir -c constraints.txt \
      --extra-index-url https://download.pytorch.org/whl/cpu '.[ml]'
USER m2kt
ENV M2KT_TEACHER_WORKDIR=/data/teacher M2KT_STUDENT_STATE_DIR=/data/student
CMD ["m2kt-student", "--help"]

FROM base AS broker
RUN pip install --no-cache-dir -c constraints.txt .
USER m2kt
ENV M2KT_DATA_DIR=/data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz').status != 200)"
CMD ["m2kt-broker", "serve", "--host", "0.0.0.0", "--port", "8080"]
