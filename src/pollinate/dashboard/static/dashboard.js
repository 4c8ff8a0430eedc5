// The dashboard's pages. Each page is an empty frame that this script fills from its
// server-sent event stream and keeps current. Text from outside (metric names, log lines,
// node names, labels, resources and config, failure reasons) is only ever set with
// textContent or as Text nodes: never as HTML.
"use strict";

(() => {
  const body = document.body;
  const page = body.dataset.page;
  const subject = body.dataset.subject;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const main = document.getElementById("main");
  const live = document.getElementById("live");

  // --- building blocks -------------------------------------------------------------------

  // el("td", {class: "x"}, "text", child): children are nodes or strings (as text)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function link(href, text) {
    return el("a", { href }, String(text));
  }

  const runLink = (id) => link("/runs/" + encodeURIComponent(id), id);
  const nodeLink = (id) => link("/nodes/" + encodeURIComponent(id), "node " + id);

  function table(id, headings) {
    const tbody = el("tbody");
    const head = el("tr", {}, ...headings.map((h) => el("th", {}, h)));
    return [el("table", { id }, el("thead", {}, head), tbody), tbody];
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 60) return seconds.toFixed(1) + " s ago";
    if (seconds < 3600) return (seconds / 60).toFixed(1) + " min ago";
    return (seconds / 3600).toFixed(1) + " h ago";
  }

  function when(epoch) {
    return new Date(epoch * 1000).toLocaleString();
  }

  function value(v) {
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
    return v === null || v === undefined ? "" : String(v);
  }

  function progress(run) {
    const of = run.rounds === null ? "?" : run.rounds;
    return "round " + run.round + " / " + of;
  }

  function stream(url, handlers) {
    const source = new EventSource(url);
    source.onopen = () => {
      live.textContent = "live";
      live.className = "live on";
    };
    source.onerror = () => {
      live.textContent = "reconnecting…";
      live.className = "live off";
    };
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (message) => handle(JSON.parse(message.data)));
    }
    return source;
  }

  // a stream with nothing to show (no such run, not allowed): no reconnecting
  function closed(source) {
    source.close();
    live.textContent = "closed";
    live.className = "live";
  }

  // --- the fleet -------------------------------------------------------------------------

  const STATES = ["online", "stale", "offline", "cordoned", "revoked"];

  function fleetPage() {
    const summary = el("p", { id: "summary" });
    const [nodes, rows] = table("nodes", [
      "Node", "Name", "State", "Heard", "Projects", "Runs", "Certificate", "Labels · resources",
    ]);
    main.append(el("h1", {}, "Fleet"), summary, nodes);
    stream("/events/fleet", {
      snapshot(data) {
        const counts = STATES.map((state) => [state, data.nodes.filter((n) => n.state === state).length]);
        const parts = counts.filter(([, count]) => count > 0).map(([state, count]) => count + " " + state);
        summary.textContent = data.nodes.length + " nodes" + (parts.length ? ": " + parts.join(", ") : "");
        rows.replaceChildren(...data.nodes.map(nodeRow));
      },
    });
  }

  function nodeRow(node) {
    return el(
      "tr",
      { "data-node": node.id },
      el("td", {}, nodeLink(node.id)),
      el("td", { class: "name" }, node.name || "-"),
      el("td", {}, stateOf(node)),
      el("td", { class: "heard" }, age(node.age)),
      el("td", { class: "projects" }, node.projects.join(", ")),
      el("td", { class: "runs" }, ...runsOf(node)),
      el("td", { class: "expiry" }, expiry(node)),
      el("td", { class: "chips" }, ...chips(node.labels, "label"), ...chips(node.resources, "resource")),
    );
  }

  function stateOf(node) {
    return el("span", { class: "state " + node.state }, node.state);
  }

  function runsOf(node) {
    if (!node.runs.length) return ["-"];
    return node.runs.flatMap((run, i) => (i ? [" ", runLink(run)] : [runLink(run)]));
  }

  // labels or resources as `k=v` chips, wrapping; text from the node, set as text
  function chips(values, kind) {
    return Object.entries(values).map(([k, v]) => el("span", { class: "chip " + kind, title: kind }, k + "=" + v));
  }

  // time left on the node's certificate ("-": unknown, a hub without TLS)
  function expiry(node) {
    if (node.cert_left === null || node.cert_left === undefined) return "-";
    const left = node.cert_left;
    let text = (left / 86400).toFixed(1) + " days";
    if (left <= 0) text = "expired";
    else if (left < 3600) text = Math.ceil(left / 60) + " min";
    else if (left < 86400) text = (left / 3600).toFixed(1) + " h";
    const soon = left < 7 * 86400 ? " soon" : "";
    return el("span", { class: "cert" + soon, title: "expires " + when(node.cert_expires) }, text);
  }

  function activity(last) {
    if (!last) return "nothing yet";
    const outcome = last.ok ? "" : " (failed)";
    return el("span", {}, runLink(last.run), " round " + last.round + ", " + last.stage + outcome);
  }

  // --- the runs --------------------------------------------------------------------------

  function runsPage() {
    const [runs, rows] = table("runs", ["Run", "App", "Project", "Status", "Progress", "Started", "Detail"]);
    main.append(el("h1", {}, "Runs"), runs);
    stream("/events/runs", {
      snapshot(data) {
        rows.replaceChildren(
          ...data.runs.map((run) =>
            el(
              "tr",
              { "data-run": run.id },
              el("td", {}, runLink(run.id)),
              el("td", {}, run.app),
              el("td", {}, run.project),
              el("td", {}, el("span", { class: "status " + run.status }, run.status)),
              el("td", {}, progressBar(run), " " + progress(run)),
              el("td", {}, when(run.created)),
              el("td", {}, run.detail),
            ),
          ),
        );
      },
    });
  }

  function progressBar(run) {
    const bar = el("progress", { max: String(run.rounds || 1) });
    bar.value = run.rounds ? run.round : 0;
    return bar;
  }

  // --- a run -----------------------------------------------------------------------------

  function runPage() {
    const title = el("h1", {}, "Run " + subject);
    const status = el("p", { id: "status" });
    const stop = el("button", { id: "stop", type: "button", hidden: "" }, "Stop run");
    const stopped = el("span", { id: "stop-result" });
    const now = el("p", { id: "now" });
    const charts = el("div", { id: "charts", class: "charts" });
    const [rounds, roundRows] = table("rounds", [
      "Round", "Applied", "Replies", "Failures", "Rejected", "Seconds", "Nodes", "Why",
    ]);
    const log = el("div", { id: "log", class: "log" });
    main.append(
      title, status, el("p", {}, stop, " ", stopped), now,
      el("h2", {}, "Metrics"), charts,
      el("h2", {}, "Rounds"), rounds,
      el("h2", {}, "Log"), log,
    );
    const state = { records: new Map(), tookPart: new Map(), current: null, plots: new Map() };

    stop.addEventListener("click", async () => {
      stop.disabled = true;
      const response = await fetch("/api/runs/" + encodeURIComponent(subject) + "/stop", {
        method: "POST",
        headers: { "X-CSRF-Token": csrf },
        credentials: "same-origin",
      });
      const answer = await response.json();
      stopped.textContent = response.ok ? "stopping…" : answer.error;
      stop.disabled = false;
    });

    function showRun(run) {
      status.replaceChildren(
        el("span", { class: "status " + run.status }, run.status), " ", progress(run),
        run.detail ? " · " + run.detail : "",
      );
      stop.hidden = !(run.status === "running" && run.may_stop);
    }

    function took(round, node, outcome) {
      if (!state.tookPart.has(round)) state.tookPart.set(round, new Map());
      const nodes = state.tookPart.get(round);
      const rank = { ok: 0, failed: 1, rejected: 2 };
      if (!nodes.has(node) || rank[outcome] > rank[nodes.get(node)]) nodes.set(node, outcome);
    }

    function addRound(record) {
      state.records.set(record.round, record);
      for (const failure of record.failed || []) took(record.round, failure.node_id, "failed");
      const row = roundRow(record);
      const old = roundRows.querySelector('tr[data-round="' + record.round + '"]');
      if (old) old.replaceWith(row);
      else roundRows.prepend(row);
      if (state.current && state.current.round <= record.round) {
        state.current = null;
        now.textContent = "";
      }
    }

    function roundRow(record) {
      const nodes = [...(state.tookPart.get(record.round) || new Map())]
        .sort((a, b) => a[0] - b[0])
        .map(([node, outcome]) => el("span", { class: "took " + outcome }, nodeLink(node), " "));
      const why = (record.failed || []).map((f) =>
        el("div", {}, "node " + f.node_id + " (" + f.stage + ", " + f.kind + "): " + f.reason),
      );
      if (record.aborted) why.push(el("div", {}, "aborted: " + record.aborted));
      return el(
        "tr",
        { "data-round": record.round },
        el("td", {}, String(record.round)),
        el("td", {}, record.applied ? "yes" : "no (model kept)"),
        el("td", {}, String(record.replies)),
        el("td", {}, String(record.failures)),
        el("td", {}, String(record.rejected)),
        el("td", {}, record.seconds.toFixed(2)),
        el("td", {}, ...nodes),
        el("td", { class: "why" }, ...why),
      );
    }

    function showCurrent() {
      const c = state.current;
      if (!c) return;
      const stages = Object.entries(c.stages).map(
        ([stage, s]) => stage + " " + (s.ok + s.failed) + "/" + s.tasks + " replies" +
          (s.failed ? ", " + s.failed + " failed" : ""),
      );
      now.textContent = "round " + c.round + " under way: " + stages.join("; ");
    }

    function current(round) {
      if (!state.current || state.current.round !== round) state.current = { round, stages: {} };
      return state.current;
    }

    function appendLog(lines) {
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      for (const line of lines) {
        log.append(
          el("div", { class: "line " + line.kind, "data-seq": line.seq },
            el("span", { class: "time" }, new Date(line.time * 1000).toLocaleTimeString()),
            " ", line.text),
        );
      }
      while (log.childElementCount > 5000) log.firstElementChild.remove();
      if (atBottom) log.scrollTop = log.scrollHeight;
    }

    let redraw = null;
    function roundsChanged() {
      if (redraw) return;
      redraw = requestAnimationFrame(() => {
        redraw = null;
        drawCharts(charts, state);
        for (const [round, record] of state.records) {
          const row = roundRows.querySelector('tr[data-round="' + round + '"]');
          if (row) row.replaceWith(roundRow(record));
        }
      });
    }

    const source = stream("/events/runs/" + encodeURIComponent(subject), {
      snapshot(data) {
        state.records.clear();
        state.tookPart.clear();
        roundRows.replaceChildren();
        log.replaceChildren();
        for (const [round, nodes] of Object.entries(data.took_part)) {
          for (const [node, outcome] of Object.entries(nodes)) took(Number(round), Number(node), outcome);
        }
        showRun(data.run);
        for (const record of data.rounds) addRound(record);
        appendLog(data.log);
        roundsChanged();
      },
      missing() {
        status.textContent = "There is no run " + subject + " on this hub.";
        closed(source);
      },
      forbidden(data) {
        status.textContent = data.reason;
        closed(source);
      },
      run: showRun,
      round(record) {
        addRound(record);
        roundsChanged();
      },
      log: appendLog,
      stage(event) {
        current(event.round).stages[event.stage] = { tasks: event.tasks, ok: 0, failed: 0 };
        showCurrent();
      },
      reply(event) {
        took(event.round, event.node, event.ok ? "ok" : "failed");
        const stage = current(event.round).stages[event.stage];
        if (stage) stage[event.ok ? "ok" : "failed"] += 1;
        showCurrent();
      },
      rejected(event) {
        took(event.round, event.node, "rejected");
      },
      bounded() {},
    });
  }

  // One chart per metric name, x: round; a series for each place the metric comes from.
  const KINDS = [
    ["centralized", "centralized", "#1f77b4"],
    ["evaluate", "federated evaluate", "#ff7f0e"],
    ["fit", "fit", "#2ca02c"],
  ];
  const COUNTS = [
    ["replies", "replies", "#2ca02c"],
    ["failures", "failures", "#d62728"],
    ["rejected", "rejected", "#9467bd"],
  ];

  function drawCharts(container, state) {
    if (typeof uPlot === "undefined") return;
    const records = [...state.records.values()].sort((a, b) => a.round - b.round);
    const rounds = records.map((r) => r.round);
    const names = new Map(); // metric name -> kinds it appears in
    for (const record of records) {
      for (const [kind] of KINDS) {
        for (const [name, v] of Object.entries(record[kind] || {})) {
          if (typeof v !== "number" && v !== null) continue;
          if (!names.has(name)) names.set(name, new Set());
          names.get(name).add(kind);
        }
      }
    }
    const wanted = new Map();
    for (const [name, kinds] of [...names].sort()) {
      const series = KINDS.filter(([kind]) => kinds.has(kind));
      const data = [rounds, ...series.map(([kind]) => records.map((r) => numberOrNull((r[kind] || {})[name])))];
      wanted.set("metric:" + name, { title: name, series, data });
    }
    const counts = COUNTS.map(([key]) => records.filter((r) => r.round > 0).map((r) => r[key]));
    const fitRounds = records.filter((r) => r.round > 0).map((r) => r.round);
    wanted.set("counts", { title: "replies, failures and rejections (fit)", series: COUNTS, data: [fitRounds, ...counts] });
    for (const [key, plot] of state.plots) {
      const want = wanted.get(key);
      if (!want || want.series.length !== plot.kinds) {
        plot.box.remove();
        plot.chart.destroy();
        state.plots.delete(key);
      }
    }
    for (const [key, want] of wanted) {
      let plot = state.plots.get(key);
      if (!plot) {
        plot = newPlot(container, key, want);
        state.plots.set(key, plot);
      } else {
        plot.chart.setData(want.data);
      }
    }
  }

  const ROUND_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

  function numberOrNull(v) {
    return typeof v === "number" ? v : null;
  }

  function newPlot(container, key, want) {
    const box = el("figure", { class: "chart", "data-chart": key }, el("figcaption", {}, want.title));
    container.append(box);
    const width = Math.max(260, Math.min(520, container.clientWidth / 2 - 24));
    const chart = new uPlot(
      {
        width,
        height: 200,
        scales: { x: { time: false } },
        axes: [{ label: "round", incrs: ROUND_STEPS }, {}],
        series: [{ label: "round" }, ...want.series.map(([, label, stroke]) => ({ label, stroke, width: 2, points: { show: true } }))],
      },
      want.data,
      box,
    );
    return { box, chart, kinds: want.series.length };
  }

  // --- a node ----------------------------------------------------------------------------

  function nodePage() {
    const title = el("h1", {}, "Node " + subject);
    const facts = el("dl", { id: "facts" });
    const labels = el("p", { id: "labels", class: "chips" });
    const resources = el("p", { id: "resources", class: "chips" });
    const [config, configRows] = table("config", ["Key", "Value"]);
    const took = el("div", { id: "took" });
    main.append(
      title, facts,
      el("h2", {}, "Labels"), labels,
      el("h2", {}, "Resources"), resources,
      el("h2", {}, "Config"), config,
      el("h2", {}, "Took part in"), took,
    );
    stream("/events/nodes/" + encodeURIComponent(subject), {
      snapshot(data) {
        const node = data.node;
        if (!node) {
          facts.replaceChildren(el("dd", {}, "The hub does not know node " + subject + "."));
          return;
        }
        facts.replaceChildren(
          el("dt", {}, "Name"), el("dd", { class: "name" }, node.name || "-"),
          el("dt", {}, "State"), el("dd", {}, stateOf(node)),
          el("dt", {}, "Last heard"), el("dd", {}, age(node.age)),
          el("dt", {}, "Projects"), el("dd", { class: "projects" }, node.projects.join(", ")),
          el("dt", {}, "Runs now"), el("dd", { class: "runs" }, ...runsOf(node)),
          el("dt", {}, "Certificate"), el("dd", { class: "expiry" }, expiry(node)),
          el("dt", {}, "Last task"), el("dd", {}, activity(node.last)),
        );
        labels.replaceChildren(...orNone(chips(node.labels, "label")));
        resources.replaceChildren(...orNone(chips(node.resources, "resource")));
        configRows.replaceChildren(
          ...Object.entries(node.config).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v))),
        );
        took.replaceChildren(
          ...Object.entries(data.runs).map(([run, rounds]) =>
            el("p", {}, runLink(run), ": rounds " + rounds.join(", ")),
          ),
        );
      },
    });
  }

  function orNone(nodes) {
    return nodes.length ? nodes : ["none"];
  }

  ({ fleet: fleetPage, runs: runsPage, run: runPage, node: nodePage })[page]();
})();
