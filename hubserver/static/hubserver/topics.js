/* The DASF topics page: the table follows the server's SSE stream (topics/stream/). */
(function () {
  "use strict";

  var body = document.getElementById("topics-body");
  var table = document.getElementById("topics-table");
  var empty = document.getElementById("topics-empty");
  var indicator = document.getElementById("live-indicator");

  function showState(state, text) {
    if (!indicator) return;
    indicator.dataset.state = state;
    indicator.querySelector(".live-text").textContent = text;
  }

  function cell(text, field, className) {
    var td = document.createElement("td");
    if (field) td.dataset.field = field;
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function when(iso) {
    if (!iso) return "never";
    var date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleString();
  }

  function render(rows) {
    var fragment = document.createDocumentFragment();
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      tr.className = "topic-row";
      tr.dataset.topic = row.slug;
      tr.appendChild(cell(row.slug, null, "mono"));
      var td = document.createElement("td");
      var badge = document.createElement("span");
      badge.className = "badge availability-" + row.availability.replace(/\s+/g, "-");
      badge.dataset.field = "availability";
      badge.textContent = row.availability;
      td.appendChild(badge);
      tr.appendChild(td);
      tr.appendChild(cell(String(row.outstanding), "outstanding"));
      tr.appendChild(cell(String(row.consumers), "consumers"));
      tr.appendChild(cell(row.store, "store"));
      var last = cell("", "last_activity");
      var time = document.createElement("time");
      time.dateTime = row.last_activity || "";
      time.textContent = when(row.last_activity);
      last.appendChild(time);
      tr.appendChild(last);
      fragment.appendChild(tr);
    });
    body.replaceChildren(fragment);
    table.hidden = rows.length === 0;
    empty.hidden = rows.length !== 0;
  }

  document.querySelectorAll("#topics-body time").forEach(function (time) {
    time.textContent = when(time.dateTime);
  });

  var source = new EventSource("stream/");
  source.addEventListener("open", function () { showState("open", "Live"); });
  source.addEventListener("error", function () { showState("connecting", "Reconnecting…"); });
  source.addEventListener("topics", function (event) {
    showState("open", "Live");
    render(JSON.parse(event.data).topics);
  });
})();
