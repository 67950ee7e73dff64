/* hubserver dashboard: keeps the server-rendered pages live over the realtime WebSocket (/ws/hub/).
 *
 * Protocol (see the realtime protocol note): the page subscribes to each device type it shows (overview) or
 * to one device (device page) and applies "reading", "status", "connection" and "command" events. The device
 * page's range picker draws longer ranges from the REST API (raw readings, or per-minute, -hour or -day
 * aggregates with a min-max band), while the live window keeps following the socket. Commands
 * are sent as {"type": "command", request_id, device_type, device_id, command, payload}. The socket
 * reconnects with exponential backoff; after a reconnect the page re-reads its own HTML to catch up.
 */
(function () {
  "use strict";

  var body = document.body;
  var PAGE = body.dataset.page;
  if (!PAGE) return;

  var STATUS_LABELS = {
    online: "Online", offline: "Offline", error: "Error", maintenance: "Maintenance",
    low_battery: "Low battery", provisioning: "Provisioning"
  };
  var COMMAND_RANK = { pending: 0, sent: 1, delivered: 2, replied: 3, failed: 3, expired: 3 };

  /* ---------- small helpers ---------- */

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function key(type, id) { return type + "\u0000" + id; }

  function relative(date) {
    var seconds = Math.round((Date.now() - date.getTime()) / 1000);
    if (seconds < 10) return "just now";
    if (seconds < 60) return seconds + " s ago";
    var minutes = Math.round(seconds / 60);
    if (minutes < 60) return minutes + " min ago";
    var hours = Math.round(minutes / 60);
    if (hours < 24) return hours + " h ago";
    var days = Math.round(hours / 24);
    if (days < 60) return days + (days === 1 ? " day ago" : " days ago");
    return date.toLocaleDateString();
  }

  function refreshTimes(root) {
    (root || document).querySelectorAll("time[data-ts]").forEach(function (node) {
      var date = new Date(node.dataset.ts);
      if (!isNaN(date)) {
        node.textContent = relative(date);
        node.title = date.toLocaleString();
      }
    });
  }

  function setSeen(node, date) {
    if (!node) return;
    var iso = date.toISOString();
    node.dataset.ts = iso;
    node.setAttribute("datetime", iso);
    node.classList.remove("muted");
    node.textContent = relative(date);
    node.title = date.toLocaleString();
  }

  function setStatus(badge, status) {
    if (!badge || !status) return;
    badge.className = "badge status-" + status;
    badge.textContent = STATUS_LABELS[status] || status;
  }

  function batteryNode(level) {
    if (level === null || level === undefined || isNaN(Number(level))) return el("span", { className: "muted", text: "—" });
    var pct = Math.round(Number(level));
    var cls = "battery" + (pct < 20 ? " battery-low" : pct < 50 ? " battery-mid" : "");
    var fill = el("span", { style: "width: " + Math.max(0, Math.min(100, pct)) + "%" });
    return el("span", { className: cls }, [
      el("span", { className: "battery-bar", "aria-hidden": "true" }, [fill]),
      el("span", { className: "battery-text", text: pct + "%" })
    ]);
  }

  function setBattery(cell, level) {
    if (!cell || level === null || level === undefined) return;
    cell.replaceChildren(batteryNode(level));
  }

  function flash(node) {
    if (!node) return;
    node.classList.add("flash");
    window.setTimeout(function () { node.classList.remove("flash"); }, 80);
  }

  function formatValue(value, valueType) {
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value === "number" && valueType === "float") return String(Number(value.toPrecision(6)));
    return String(value);
  }

  function jsonText(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "object" && Object.keys(value).length === 0) return "";
    return JSON.stringify(value).replace(/,"/g, ', "').replace(/":/g, '": ');
  }

  var requestCounter = 0;
  function requestId() {
    requestCounter += 1;
    return "r" + Date.now().toString(36) + "-" + requestCounter;
  }

  /* ---------- the socket ---------- */

  var indicator = document.getElementById("live-indicator");
  function showState(state, text) {
    if (!indicator) return;
    indicator.dataset.state = state;
    indicator.querySelector(".live-text").textContent = text;
  }

  function HubSocket(handlers) {
    this.handlers = handlers;
    this.socket = null;
    this.attempt = 0;
    this.everOpened = false;
    this.stopped = false;
    this.pingTimer = null;
    this.waiting = new Set();
    this.connect();
  }

  HubSocket.prototype.url = function () {
    var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + window.location.host + (body.dataset.wsPath || "/ws/hub/");
  };

  HubSocket.prototype.connect = function () {
    var self = this;
    showState("connecting", self.attempt ? "Reconnecting…" : "Connecting…");
    var socket;
    try {
      socket = new WebSocket(self.url());
    } catch (error) {
      self.retry();
      return;
    }
    self.socket = socket;
    socket.onopen = function () {
      var reconnected = self.everOpened;
      self.attempt = 0;
      self.everOpened = true;
      showState("open", "Live");
      self.handlers.open(reconnected);
      window.clearInterval(self.pingTimer);
      self.pingTimer = window.setInterval(function () { self.send({ type: "ping" }); }, 30000);
    };
    socket.onmessage = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (error) { return; }
      if (!event || typeof event !== "object") return;
      if ((event.type === "subscribed" || event.type === "error") && self.waiting.delete(event.request_id)) {
        if (!self.waiting.size && indicator) indicator.dataset.subscribed = "true";
        if (event.type === "subscribed") return;
      }
      self.handlers.event(event);
    };
    socket.onclose = function (close) {
      window.clearInterval(self.pingTimer);
      if (indicator) indicator.dataset.subscribed = "false";
      if (self.socket !== socket) return;
      self.socket = null;
      if (close.code === 4401 || close.code === 4403) {
        self.stopped = true;
        showState("denied", close.code === 4401 ? "Signed out" : "Not allowed");
        return;
      }
      self.retry();
    };
  };

  HubSocket.prototype.retry = function () {
    var self = this;
    if (self.stopped) return;
    var delay = Math.min(30000, 1000 * Math.pow(2, self.attempt)) * (0.75 + Math.random() * 0.5);
    self.attempt += 1;
    var seconds = Math.max(1, Math.round(delay / 1000));
    showState("closed", "Offline · retrying in " + seconds + " s");
    window.setTimeout(function () { self.connect(); }, delay);
  };

  /* Subscribe to each {device_type, device_id?}; the indicator gets data-subscribed="true" once all are
   * answered (so a viewer, or a test, knows that no later event can be missed). */
  HubSocket.prototype.subscribe = function (targets) {
    var self = this;
    self.waiting = new Set();
    targets.forEach(function (target) {
      var id = requestId();
      self.waiting.add(id);
      self.send(Object.assign({ type: "subscribe", request_id: id }, target));
    });
    if (!self.waiting.size && indicator) indicator.dataset.subscribed = "true";
  };

  HubSocket.prototype.send = function (event) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(event));
    return true;
  };

  /* Re-read this page's HTML (after a reconnect, events may have been missed). */
  function fetchPage() {
    return fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok || response.redirected) throw new Error("page unavailable");
        return response.text();
      })
      .then(function (html) { return new DOMParser().parseFromString(html, "text/html"); });
  }

  /* ---------- overview ---------- */

  /* Each type's section shows one page of its devices, found by a search and a status filter kept in the
   * query string (<type>-q, <type>-status, <type>-page). Changing them fetches that section alone
   * (?section=<type>) and swaps its body in; live events update the rows on screen, and an event that changes
   * what the section should show (a status change under a filter, or on a device of another page, which
   * moves the counts) refreshes the section, at most once a second. */
  function startOverview() {
    var rows = new Map();
    var sections = new Map();
    var refreshTimers = new Map();
    var fetching = new Map();
    document.querySelectorAll(".type-section").forEach(function (section) {
      sections.set(section.dataset.deviceType, section);
    });
    function indexRows(root) {
      root.querySelectorAll("tr.device-row").forEach(function (row) {
        rows.set(key(row.dataset.deviceType, row.dataset.deviceId), row);
      });
    }
    indexRows(document);

    function filtered(section) {
      var search = section.querySelector("[data-search]");
      var status = section.querySelector("[data-status-filter]");
      return Boolean((search && search.value.trim()) || (status && status.value));
    }

    /* This section's state in the page's query string; page 1 unless `page` is given. */
    function stateParams(section, page) {
      var type = section.dataset.deviceType;
      var params = new URLSearchParams(window.location.search);
      var search = section.querySelector("[data-search]");
      var status = section.querySelector("[data-status-filter]");
      [["-q", search ? search.value.trim() : ""], ["-status", status ? status.value : ""], ["-page", page || ""]]
        .forEach(function (pair) {
          if (pair[1] && pair[1] !== "1") params.set(type + pair[0], pair[1]);
          else params.delete(type + pair[0]);
        });
      return params;
    }

    function load(section, params) {
      var type = section.dataset.deviceType;
      var query = params.toString();
      window.history.replaceState(null, "", window.location.pathname + (query ? "?" + query : ""));
      var request = new URLSearchParams(params);
      request.set("section", type);
      var body = section.querySelector("[data-section-body]");
      body.setAttribute("aria-busy", "true");
      var ticket = {};
      fetching.set(type, ticket);
      return fetch(window.location.pathname + "?" + request.toString(), {
        credentials: "same-origin", headers: { Accept: "text/html" }
      }).then(function (response) {
        if (!response.ok || response.redirected) throw new Error("section unavailable");
        return response.text();
      }).then(function (html) {
        if (fetching.get(type) !== ticket) return; // a newer request for this section is under way
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector(".type-section");
        if (!fresh) return;
        section.querySelectorAll("tr.device-row").forEach(function (row) {
          rows.delete(key(row.dataset.deviceType, row.dataset.deviceId));
        });
        body.replaceWith(fresh.querySelector("[data-section-body]"));
        section.dataset.online = fresh.dataset.online;
        section.querySelector("[data-count-online]").textContent = fresh.dataset.online;
        section.querySelector("[data-count-total]").textContent = fresh.querySelector("[data-count-total]").textContent;
        var tools = section.querySelector("[data-tools]");
        var freshTools = fresh.querySelector("[data-tools]");
        if (!tools && freshTools) {
          section.querySelector(".card-head").after(freshTools);
          bindTools(section);
        } else if (tools && freshTools) {
          // Keep what the user is typing; refresh the counts in the status filter.
          tools.querySelectorAll("option").forEach(function (option, index) {
            var freshOption = freshTools.querySelectorAll("option")[index];
            if (freshOption) option.textContent = freshOption.textContent;
          });
        }
        indexRows(section);
        refreshTimes(section);
      }).catch(function () {
        body.removeAttribute("aria-busy");
      }).finally(function () {
        if (fetching.get(type) === ticket) {
          fetching.delete(type);
          var current = section.querySelector("[data-section-body]");
          if (current) current.removeAttribute("aria-busy");
        }
      });
    }

    function currentPage(section) {
      var params = new URLSearchParams(window.location.search);
      return params.get(section.dataset.deviceType + "-page") || "";
    }

    function scheduleRefresh(section) {
      var type = section.dataset.deviceType;
      if (refreshTimers.has(type)) return;
      refreshTimers.set(type, window.setTimeout(function () {
        refreshTimers.delete(type);
        load(section, stateParams(section, currentPage(section)));
      }, 1000));
    }

    function bindTools(section) {
      var tools = section.querySelector("[data-tools]");
      if (!tools || tools.dataset.bound) return;
      tools.dataset.bound = "1";
      var typing = null;
      tools.addEventListener("submit", function (submit) {
        submit.preventDefault();
        load(section, stateParams(section));
      });
      tools.querySelector("[data-search]").addEventListener("input", function () {
        window.clearTimeout(typing);
        typing = window.setTimeout(function () { load(section, stateParams(section)); }, 250);
      });
      tools.querySelector("[data-status-filter]").addEventListener("change", function () {
        load(section, stateParams(section));
      });
    }

    sections.forEach(function (section) {
      bindTools(section);
      section.addEventListener("click", function (click) {
        var link = click.target.closest("a[data-page-link]");
        if (!link || click.defaultPrevented || click.button !== 0 || click.metaKey || click.ctrlKey) return;
        click.preventDefault();
        var page = new URL(link.href, window.location.href).searchParams.get(section.dataset.deviceType + "-page");
        load(section, stateParams(section, page)).then(function () {
          section.scrollIntoView({ block: "nearest" });
        });
      });
    });

    function changeStatus(row, status) {
      var old = row.dataset.status;
      if (!status || status === old) return;
      row.dataset.status = status;
      setStatus(row.querySelector("[data-field=status]"), status);
      var section = sections.get(row.dataset.deviceType);
      if (!section) return;
      if (filtered(section)) {
        scheduleRefresh(section); // the device may no longer match (or others may now)
      } else if ((old === "online") !== (status === "online")) {
        var online = Number(section.dataset.online || 0) + (status === "online" ? 1 : -1);
        section.dataset.online = String(Math.max(0, online));
        section.querySelector("[data-count-online]").textContent = section.dataset.online;
      }
    }

    function apply(event) {
      var row = rows.get(key(event.device_type, event.device_id));
      var status = event.type === "connection" ? event.state : event.type === "status" ? event.status : null;
      if (!row) {
        // A device on another page (or not matching the filter): only the counts and membership can change.
        var section = sections.get(event.device_type);
        if (section && status) scheduleRefresh(section);
        return;
      }
      var now = new Date();
      if (event.type === "connection") {
        changeStatus(row, event.state);
        if (event.state === "online") setSeen(row.querySelector("[data-field=seen]"), now);
      } else if (event.type === "status") {
        changeStatus(row, event.status);
        setBattery(row.querySelector("[data-field=battery]"), event.battery_level);
        setSeen(row.querySelector("[data-field=seen]"), now);
      } else if (event.type === "reading") {
        setSeen(row.querySelector("[data-field=seen]"), now);
      } else {
        return;
      }
      flash(row);
    }

    function resync() {
      sections.forEach(function (section) { load(section, stateParams(section, currentPage(section))); });
    }

    var socket = new HubSocket({
      open: function (reconnected) {
        socket.subscribe(Array.from(sections.keys()).map(function (type) { return { device_type: type }; }));
        if (reconnected) resync();
      },
      event: apply
    });
  }

  /* ---------- device page ---------- */

  function startDevice() {
    var head = document.getElementById("device");
    var TYPE = head.dataset.deviceType;
    var DEVICE = head.dataset.deviceId;
    var seriesData = JSON.parse(document.getElementById("dashboard-series").textContent);
    var LIMIT = seriesData.limit || 100;
    var charts = new Map();

    var AXIS = {
      stroke: "#667085",
      grid: { stroke: "#eef0f3", width: 1 },
      ticks: { stroke: "#e4e7ec", width: 1, size: 4 },
      font: "11px system-ui, -apple-system, Segoe UI, Roboto, sans-serif"
    };
    var LINE = "#2f5bd3";
    var BUCKET_WORDS = { "1m": "minute", "1h": "hour", "1d": "day" };

    function label(card) { return card.querySelector("h3").firstChild.textContent.trim(); }

    function chartOptions(chart) {
      var card = chart.card;
      var valueType = chart.valueType;
      var unit = chart.unit ? " " + chart.unit : "";
      var aggregate = chart.mode === "aggregate";
      var many = chart.shown[0].length > 200;
      var series = aggregate ? [
        {},
        { label: label(card) + " (mean)", stroke: LINE, width: 1.5, points: { show: false } },
        { label: "min", stroke: "rgba(47, 91, 211, 0.35)", width: 1, points: { show: false } },
        { label: "max", stroke: "rgba(47, 91, 211, 0.35)", width: 1, points: { show: false } }
      ] : [
        {},
        {
          label: label(card),
          stroke: LINE,
          width: many ? 1.25 : 2,
          fill: "rgba(47, 91, 211, 0.07)",
          paths: valueType === "bool" && window.uPlot.paths && window.uPlot.paths.stepped
            ? window.uPlot.paths.stepped({ align: 1 }) : undefined,
          points: { show: !many, size: 5, fill: LINE }
        }
      ];
      return {
        width: Math.max(200, chart.holder.clientWidth || 320),
        height: 170,
        legend: { show: false },
        cursor: { drag: { x: false, y: false }, points: { size: 7 } },
        scales: {
          x: {
            time: true,
            // One point (or several at one instant) would give an empty range: show ten minutes around it.
            range: function (u, min, max) {
              var xs = u.data && u.data[0];
              if (xs && xs.length === 1) return [xs[0] - 300, xs[0] + 300];
              return min === max ? [min - 300, max + 300] : [min, max];
            }
          }
        },
        axes: [
          Object.assign({}, AXIS, { space: 60 }),
          Object.assign({}, AXIS, { size: 50, space: 28, values: function (u, values) { return values.map(function (v) { return formatValue(v, "float"); }); } })
        ],
        series: series,
        // The band between each bucket's min and max (null where the bucket had one value).
        bands: aggregate ? [{ series: [3, 2], fill: "rgba(47, 91, 211, 0.14)" }] : undefined,
        hooks: {
          setCursor: [function (u) {
            var foot = chart.foot;
            var index = u.cursor.idx;
            if (index === null || index === undefined || u.data[1][index] === null || u.data[1][index] === undefined) {
              if (chart.footHtml !== null) { foot.innerHTML = chart.footHtml; chart.footHtml = null; refreshTimes(foot); }
              return;
            }
            if (chart.footHtml === null) chart.footHtml = foot.innerHTML;
            var when = new Date(u.data[0][index] * 1000);
            if (aggregate) {
              var low = u.data[2][index], high = u.data[3][index];
              var spread = low === null || low === undefined ? "" : " (" + formatValue(low, "float") + " – " + formatValue(high, "float") + ")";
              foot.textContent = "mean " + formatValue(u.data[1][index], "float") + spread + unit + ", the " +
                BUCKET_WORDS[chart.bucket] + " from " + when.toLocaleString();
            } else {
              foot.textContent = formatValue(u.data[1][index], valueType) + unit + " at " + when.toLocaleString();
            }
          }]
        }
      };
    }

    function draw(chart) {
      if (chart.plot) { chart.plot.destroy(); chart.plot = null; }
      chart.card.classList.toggle("is-empty", chart.shown[0].length === 0);
      chart.card.dataset.count = String(chart.shown[0].length);
      chart.card.dataset.mode = chart.mode;
      if (typeof window.uPlot !== "function") return;
      chart.plot = new window.uPlot(chartOptions(chart), chart.shown, chart.holder);
    }

    function show(chart, mode, data, bucket, note) {
      chart.mode = mode;
      chart.shown = data;
      chart.bucket = bucket || null;
      var empty = chart.card.querySelector(".chart-empty");
      if (empty) empty.textContent = note || chart.emptyText;
      draw(chart);
    }

    function makeChart(card, points) {
      var holder = card.querySelector(".chart");
      var chart = {
        card: card, holder: holder, foot: card.querySelector("[data-foot]"), footHtml: null, plot: null,
        unit: card.dataset.unit || "", valueType: card.dataset.valueType,
        emptyText: (card.querySelector(".chart-empty") || {}).textContent || "",
        // The live window (the latest readings, kept current by the socket), whatever the chart shows.
        live: [points.map(function (p) { return p[0]; }), points.map(function (p) { return p[1]; })]
      };
      show(chart, "live", chart.live);
      if (window.ResizeObserver) {
        new ResizeObserver(function () {
          var width = holder.clientWidth;
          if (width && chart.plot && Math.abs(width - chart.plot.width) > 1) chart.plot.setSize({ width: width, height: 170 });
        }).observe(holder);
      }
      return chart;
    }

    document.querySelectorAll(".chart-card").forEach(function (card) {
      var name = card.dataset.reading;
      if (card.querySelector(".chart")) charts.set(name, makeChart(card, seriesData.points[name] || []));
    });

    function showLatest(card, value, date) {
      var valueNode = card.querySelector("[data-latest]");
      valueNode.textContent = formatValue(value, card.dataset.valueType);
      var foot = card.querySelector("[data-foot]");
      var time = el("time", {});
      foot.replaceChildren(document.createTextNode("Updated "), time);
      setSeen(time, date);
      card.classList.add("pulse");
      window.setTimeout(function () { card.classList.remove("pulse"); }, 600);
    }

    function addReading(event) {
      var date = event.timestamp ? new Date(event.timestamp) : new Date();
      if (isNaN(date)) date = new Date();
      var x = date.getTime() / 1000;
      Object.keys(event.readings || {}).forEach(function (name) {
        var value = event.readings[name];
        if (value === null || value === undefined) return;
        var card = document.querySelector('.chart-card[data-reading="' + CSS.escape(name) + '"]');
        if (!card) return;
        var chart = charts.get(name);
        if (chart) {
          var xs = chart.live[0];
          var ys = chart.live[1];
          var y = typeof value === "boolean" ? (value ? 1 : 0) : value;
          // Keep the series ordered by time: readings may arrive out of order (device-side timestamps).
          var at = xs.length;
          while (at > 0 && xs[at - 1] > x) at -= 1;
          xs.splice(at, 0, x);
          ys.splice(at, 0, y);
          while (xs.length > LIMIT) { xs.shift(); ys.shift(); }
          if (chart.mode === "live") {
            card.classList.remove("is-empty");
            card.dataset.count = String(xs.length);
            if (chart.plot) {
              chart.plot.setData(chart.live);
              if (chart.plot.width < 50) chart.plot.setSize({ width: chart.holder.clientWidth, height: 170 });
            }
          }
          if (at === xs.length - 1 || xs.length === 1) showLatest(card, value, date);
        } else {
          card.classList.remove("is-empty");
          showLatest(card, value, date);
        }
      });
    }

    /* History: the range picker draws each chart from the API (raw readings or a rollup bucket). */

    var chartsBox = document.getElementById("charts");
    var picker = document.getElementById("range-picker");
    var rangeStatus = document.getElementById("range-status");
    var RANGES = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "1y": 365 * 86400 };
    var POINTS = 1500;  // at most this many raw readings or buckets per chart
    var range = "live";

    function setRangeState(state, text) {
      if (!chartsBox) return;
      chartsBox.dataset.state = state;
      if (rangeStatus) rangeStatus.textContent = text || "";
    }

    function historySeries(rows, name, bucket) {
      var xs = [], ys = [];
      if (bucket === "raw") {
        rows.forEach(function (row) {
          var value = row[name];
          if (value === null || value === undefined) return;
          xs.push(Date.parse(row.timestamp) / 1000);
          ys.push(typeof value === "boolean" ? (value ? 1 : 0) : value);
        });
        return [xs, ys];
      }
      var lows = [], highs = [];
      var step = ({ "1m": 60, "1h": 3600, "1d": 86400 })[bucket];
      rows.forEach(function (row) {
        var stats = row[name];
        if (!stats || !stats.count) return;
        var x = Date.parse(row.start) / 1000;
        if (xs.length && x - xs[xs.length - 1] > 1.5 * step) {  // no data for a while: a gap, not a line
          xs.push(xs[xs.length - 1] + step); ys.push(null); lows.push(null); highs.push(null);
        }
        xs.push(x);
        ys.push(stats.mean);
        lows.push(stats.count > 1 ? stats.min : null);
        highs.push(stats.count > 1 ? stats.max : null);
      });
      return [xs, ys, lows, highs];
    }

    function showRange(name) {
      range = name;
      if (picker) picker.querySelectorAll("button[data-range]").forEach(function (button) {
        button.setAttribute("aria-pressed", String(button.dataset.range === name));
      });
      if (name === "live") {
        charts.forEach(function (chart) { show(chart, "live", chart.live); });
        setRangeState("live", "");
        if (chartsBox) { chartsBox.dataset.range = "live"; delete chartsBox.dataset.bucket; }
        return;
      }
      var url = chartsBox && chartsBox.dataset.readingsUrl;
      if (!url) { setRangeState("error", "The readings API is not available here."); return; }
      var started = window.performance.now();
      var since = new Date(Date.now() - RANGES[name] * 1000).toISOString();
      setRangeState("loading", "Loading…");
      var query = "?bucket=auto&limit=" + POINTS + "&since=" + encodeURIComponent(since);
      fetch(url + query, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status === 403) throw new Error("You may not view this device's readings.");
          if (!response.ok) throw new Error("The hub answered " + response.status + ".");
          return response.json();
        })
        .then(function (rows) {
          if (range !== name) return;  // another range was picked meanwhile
          rows.reverse();  // the API answers newest first
          var bucket = rows.length && rows[0].bucket ? rows[0].bucket : "raw";
          charts.forEach(function (chart, reading) {
            if (bucket !== "raw" && chart.valueType === "bool") {
              show(chart, "raw", [[], []], bucket, "No aggregates of yes/no values: pick a shorter range.");
              return;
            }
            show(chart, bucket === "raw" ? "raw" : "aggregate", historySeries(rows, reading, bucket), bucket);
          });
          window.requestAnimationFrame(function () {
            if (range !== name) return;
            chartsBox.dataset.range = name;
            chartsBox.dataset.bucket = bucket;
            chartsBox.dataset.drawMs = (window.performance.now() - started).toFixed(1);
            var what = bucket === "raw" ? rows.length + " readings"
              : rows.length + " " + BUCKET_WORDS[bucket] + "s: mean, with the min–max band";
            setRangeState("drawn", what);
          });
        })
        .catch(function (error) {
          if (range === name) setRangeState("error", error.message || "Could not load the history.");
        });
    }

    if (picker) {
      picker.addEventListener("click", function (click) {
        var button = click.target.closest("button[data-range]");
        if (button && button.dataset.range !== range) showRange(button.dataset.range);
      });
    }

    /* StateFields the device reported (in a status message or a command reply). */
    function applyState(state) {
      Object.keys(state).forEach(function (name) {
        var cell = head.querySelector('[data-state-field="' + CSS.escape(name) + '"]');
        if (!cell) return;
        var value = state[name];
        cell.querySelector("[data-state-value]").textContent =
          value === null || value === undefined ? "\u2014" : formatValue(value, typeof value === "number" ? "float" : "");
        flash(cell);
      });
    }

    var statusBadge = head.querySelector("[data-field=status]");
    function applyStatus(status) {
      if (!status) return;
      head.dataset.status = status;
      setStatus(statusBadge, status);
    }

    /* Recent commands */
    var commandRows = document.getElementById("command-rows");
    var commandsEmpty = document.getElementById("commands-empty");
    var pending = new Map(); // request_id -> {form, payload}

    function findCommandRow(id) {
      return commandRows.querySelector('tr[data-command-id="' + CSS.escape(String(id)) + '"]');
    }

    function upsertCommand(event, payload) {
      if (event.id === undefined || event.id === null) return null;
      var status = event.command_status || "pending";
      var row = findCommandRow(event.id);
      if (!row) {
        var nameCell = el("td", {}, [el("span", { className: "mono", text: event.command || "" })]);
        var payloadText = jsonText(payload);
        if (payloadText) nameCell.appendChild(el("span", { className: "payload mono small", text: payloadText }));
        var time = el("time", {});
        setSeen(time, new Date());
        row = el("tr", { "data-command-id": String(event.id), "data-status": status }, [
          nameCell,
          el("td", {}, [el("span", { className: "badge cmd-" + status, "data-field": "command-status", text: status })]),
          el("td", {}, [time]),
          el("td", { className: "mono small", "data-field": "result" }, [el("span", { className: "muted", text: "—" })])
        ]);
        commandRows.insertBefore(row, commandRows.firstChild);
        while (commandRows.children.length > 15) commandRows.removeChild(commandRows.lastChild);
        commandsEmpty.hidden = true;
      } else if ((COMMAND_RANK[status] || 0) >= (COMMAND_RANK[row.dataset.status] || 0)) {
        row.dataset.status = status;
        var badge = row.querySelector("[data-field=command-status]");
        badge.className = "badge cmd-" + status;
        badge.textContent = status;
      }
      var resultText = jsonText(event.result);
      if (resultText) row.querySelector("[data-field=result]").textContent = resultText;
      flash(row);
      return row;
    }

    function formStatus(form, text, kind) {
      var node = form.querySelector("[data-form-status]");
      node.textContent = text;
      node.className = "form-status small" + (kind ? " is-" + kind : "");
    }

    function readPayload(form) {
      if (form.dataset.raw === "1") {
        var text = form.querySelector("textarea[name=__raw__]").value.trim();
        if (!text) return {};
        var parsed = JSON.parse(text); // throws SyntaxError, reported to the user
        return parsed;
      }
      var payload = {};
      form.querySelectorAll("[data-kind]").forEach(function (input) {
        var kind = input.dataset.kind;
        var name = input.name;
        if (kind === "boolean") { payload[name] = input.checked; return; }
        var raw = input.value;
        if (raw === "") return; // optional and left empty: omitted (required fields are enforced by the browser)
        if (kind === "integer") payload[name] = parseInt(raw, 10);
        else if (kind === "number") payload[name] = Number(raw);
        else if (kind === "enum" && input.dataset.jsonType === "number") payload[name] = Number(raw);
        else payload[name] = raw;
      });
      return payload;
    }

    var socket;
    document.querySelectorAll("form.command-form").forEach(function (form) {
      form.addEventListener("submit", function (submit) {
        submit.preventDefault();
        var payload;
        try {
          payload = readPayload(form);
        } catch (error) {
          formStatus(form, "The payload is not valid JSON: " + error.message, "error");
          return;
        }
        var id = requestId();
        var sent = socket.send({
          type: "command", request_id: id, device_type: TYPE, device_id: DEVICE,
          command: form.dataset.command, payload: payload
        });
        if (!sent) {
          formStatus(form, "Not connected to the hub; try again in a moment.", "error");
          return;
        }
        pending.set(id, { form: form, payload: payload });
        form.querySelector("button[type=submit]").disabled = true;
        formStatus(form, "Sending…");
        window.setTimeout(function () {
          if (pending.delete(id)) {
            form.querySelector("button[type=submit]").disabled = false;
            formStatus(form, "No answer from the hub.", "error");
          }
        }, 15000);
      });
    });

    function settle(requestIdValue, text, kind) {
      var entry = pending.get(requestIdValue);
      if (!entry) return null;
      pending.delete(requestIdValue);
      entry.form.querySelector("button[type=submit]").disabled = false;
      formStatus(entry.form, text, kind);
      return entry;
    }

    function apply(event) {
      if (event.type === "error") {
        if (event.request_id) settle(event.request_id, event.message || event.code || "Refused", "error");
        return;
      }
      if (event.device_type !== TYPE || event.device_id !== DEVICE) return;
      if (event.type === "reading") {
        addReading(event);
        setSeen(head.querySelector("[data-field=seen]"), new Date());
      } else if (event.type === "status") {
        applyStatus(event.status);
        setBattery(head.querySelector("[data-field=battery]"), event.battery_level);
        if (event.firmware_version) head.querySelector("[data-field=firmware]").textContent = event.firmware_version;
        setSeen(head.querySelector("[data-field=seen]"), new Date());
      } else if (event.type === "connection") {
        applyStatus(event.state);
        if (event.state === "online") setSeen(head.querySelector("[data-field=seen]"), new Date());
      } else if (event.type === "state") {
        applyState(event.state || {});
      } else if (event.type === "command") {
        var entry = event.request_id ? pending.get(event.request_id) : null;
        upsertCommand(event, entry ? entry.payload : undefined);
        if (entry) settle(event.request_id, "Queued · watch its progress under Recent commands", "ok");
      }
    }

    function resync() {
      fetchPage().then(function (doc) {
        var fresh = doc.getElementById("device");
        if (fresh) {
          applyStatus(fresh.dataset.status);
          ["battery", "firmware"].forEach(function (field) {
            var node = fresh.querySelector("[data-field=" + field + "]");
            if (node) head.querySelector("[data-field=" + field + "]").replaceChildren.apply(
              head.querySelector("[data-field=" + field + "]"), Array.prototype.slice.call(node.childNodes));
          });
          fresh.querySelectorAll("[data-state-field]").forEach(function (node) {
            var mine = head.querySelector('[data-state-field="' + CSS.escape(node.dataset.stateField) + '"]');
            if (mine) mine.replaceChildren.apply(mine, Array.prototype.slice.call(node.childNodes));
          });
          var seen = fresh.querySelector("[data-field=seen]");
          var mine = head.querySelector("[data-field=seen]");
          if (seen && mine) mine.replaceWith(seen);
        }
        var series = doc.getElementById("dashboard-series");
        if (series) {
          var points = JSON.parse(series.textContent).points || {};
          charts.forEach(function (chart, name) {
            var list = points[name] || [];
            chart.live = [list.map(function (p) { return p[0]; }), list.map(function (p) { return p[1]; })];
            if (chart.mode === "live") show(chart, "live", chart.live);
          });
        }
        doc.querySelectorAll(".chart-card").forEach(function (freshCard) {
          var card = document.querySelector('.chart-card[data-reading="' + CSS.escape(freshCard.dataset.reading) + '"]');
          if (!card) return;
          var chart = charts.get(freshCard.dataset.reading);
          if (!chart || chart.mode === "live") card.classList.toggle("is-empty", freshCard.classList.contains("is-empty"));
          card.querySelector("[data-latest]").textContent = freshCard.querySelector("[data-latest]").textContent;
          card.querySelector("[data-foot]").innerHTML = freshCard.querySelector("[data-foot]").innerHTML;
        });
        var freshRows = doc.getElementById("command-rows");
        if (freshRows) {
          commandRows.replaceChildren.apply(commandRows, Array.prototype.slice.call(freshRows.childNodes));
          commandsEmpty.hidden = commandRows.children.length > 0;
        }
        refreshTimes();
      }).catch(function () {});
    }

    socket = new HubSocket({
      open: function (reconnected) {
        socket.subscribe([{ device_type: TYPE, device_id: DEVICE }]);
        if (reconnected) resync();
      },
      event: apply
    });
  }

  refreshTimes();
  window.setInterval(function () { refreshTimes(); }, 10000);
  if (PAGE === "overview") startOverview();
  else if (PAGE === "device") startDevice();
})();
