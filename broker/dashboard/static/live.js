// Live topics table: the broker says "changed" over SSE (cookie-authenticated), we refetch the rows.
(function () {
  var body = document.querySelector("#topics tbody");
  if (!body || !window.EventSource) return;
  var source = new EventSource("/dashboard/events");
  source.addEventListener("changed", function () {
    fetch("/dashboard/fragments/topics", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { body.innerHTML = html; body.dataset.updated = String(Date.now()); })
      .catch(function () { /* the next event retries */ });
  });
})();
