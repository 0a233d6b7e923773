// Watch page: a live session's terminals, read-only, as the gateway writes them.
//
// Short polling with a byte offset: every POLL_MS the player's driver asks the cast endpoint
// for the whole lines after the offset it has, and feeds them to the terminal. Plain GETs go
// through the same login, MFA and authorisation as every page, work the same under daphne,
// the test server and any proxy, and a lost request is simply asked again from the same
// offset. The gateway flushes a recording at least every second, so the view runs that flush
// interval plus up to one poll behind.
(function () {
  "use strict";

  const POLL_MS = 250; // between polls when the last one had caught up
  const STATUS_MS = 2000; // new channels, session end
  const CONTEXT_BYTES = 256 * 1024; // output replayed to show the screen as it is now
  const PAGE_BYTES = 1024 * 1024;

  const root = document.getElementById("watch");
  if (!root) return;
  const playersEl = document.getElementById("watch-players");
  const message = document.getElementById("watch-message");
  const badge = document.getElementById("watch-badge");
  const players = new Map(); // recording id -> player
  const IDLE_POLLS_AFTER_END = 12; // ~3 s of nothing new once the session has ended
  let sessionEnded = false; // the status says so; a recording left unsealed would poll forever

  async function fetchPage(castUrl, from, max) {
    const response = await fetch(castUrl + "?from=" + from + "&max=" + max, {
      credentials: "same-origin",
      cache: "no-store",
    });
    if (!response.ok) {
      const error = new Error("HTTP " + response.status);
      error.status = response.status;
      throw error;
    }
    const lines = (await response.text()).split("\n");
    const events = [];
    for (const line of lines.slice(1)) {
      if (line) events.push(JSON.parse(line));
    }
    return {
      header: JSON.parse(lines[0]),
      events: events,
      next: Number(response.headers.get("X-Cast-Next")),
      size: Number(response.headers.get("X-Cast-Size")),
      complete: response.headers.get("X-Cast-Complete") === "1",
    };
  }

  function parseSize(text) {
    const [cols, rows] = String(text).split("x").map((n) => parseInt(n, 10));
    return cols > 0 && rows > 0 ? { cols: cols, rows: rows } : null;
  }

  // An asciinema-player driver (a function as the player's source): reset the terminal with
  // the recent output, then poll for what follows.
  function pollingDriver(castUrl, onUpdate) {
    return function ({ dispatch }) {
      let offset = null;
      let lastTime = 0;
      let running = false;
      let stopped = false;
      let timer = null;
      let failures = 0;
      let idleAfterEnd = 0;

      function timing(rate) {
        return { time: lastTime, rate: rate, sampledAt: performance.timeOrigin + performance.now() };
      }

      function apply(events) {
        let output = [];
        for (const [time, code, data] of events) {
          lastTime = time;
          if (code === "o") {
            output.push(data);
          } else if (code === "r") {
            const size = parseSize(data);
            if (output.length) dispatch("output", output);
            output = [];
            if (size) dispatch("resize", size);
          }
        }
        if (output.length) dispatch("output", output);
      }

      async function start() {
        // An offset past the end answers with the header and the size only.
        const first = await fetchPage(castUrl, 999999999999999, 1);
        let size = { cols: first.header.width, rows: first.header.height };
        const context = await fetchPage(castUrl, Math.max(0, first.size - CONTEXT_BYTES), PAGE_BYTES * 4);
        let init = "";
        for (const [time, code, data] of context.events) {
          lastTime = time;
          if (code === "o") init += data;
          else if (code === "r") size = parseSize(data) || size;
        }
        dispatch("reset", { size: size, init: init });
        dispatch("playing");
        dispatch("timing", timing(1));
        offset = context.next;
        onUpdate(context);
        if (context.complete) return finish();
        schedule(POLL_MS);
      }

      function schedule(delay) {
        if (!stopped) timer = setTimeout(poll, delay);
      }

      function finish() {
        stopped = true;
        dispatch("timing", timing(0));
        dispatch("ended", { message: "The session has ended" });
      }

      async function poll() {
        try {
          const page = await fetchPage(castUrl, offset, PAGE_BYTES);
          failures = 0;
          apply(page.events);
          offset = page.next;
          if (page.events.length) dispatch("timing", timing(1));
          onUpdate(page);
          if (page.complete) return finish();
          idleAfterEnd = sessionEnded && !page.events.length ? idleAfterEnd + 1 : 0;
          if (idleAfterEnd > IDLE_POLLS_AFTER_END) return finish();
          schedule(page.next < page.size ? 0 : POLL_MS);
        } catch (error) {
          if (error.status === 403 || error.status === 404) {
            stopped = true;
            dispatch("offline", { message: "Not allowed to watch any more (reload the page)" });
            return;
          }
          failures += 1;
          dispatch("loading");
          schedule(Math.min(5000, 500 * failures));
        }
      }

      return {
        play() {
          if (running) return true;
          running = true;
          dispatch("play");
          start().catch((error) => {
            dispatch("offline", { message: "Cannot read the recording: " + error.message });
          });
          return true;
        },
        stop() {
          stopped = true;
          clearTimeout(timer);
        },
        getTiming() {
          return timing(stopped ? 0 : 1);
        },
      };
    };
  }

  function addPlayer(recording) {
    const card = document.createElement("section");
    card.className = "card player-card";
    card.id = "channel-" + recording.channel;
    const title = document.createElement("h2");
    title.textContent = "Terminal, channel " + recording.channel;
    const el = document.createElement("div");
    el.className = "player";
    el.dataset.player = "live";
    el.dataset.recording = String(recording.id);
    const updated = document.createElement("p");
    updated.className = "muted watch-updated";
    updated.textContent = "Waiting for output…";
    card.append(title, el, updated);
    playersEl.append(card);
    const onUpdate = (page) => {
      updated.textContent =
        "Last read " + new Date().toLocaleTimeString() + " · " + page.size.toLocaleString() + " bytes recorded";
      el.dataset.offset = String(page.next);
    };
    const player = AsciinemaPlayer.create(pollingDriver(recording.cast, onUpdate), el, {
      autoPlay: true,
      fit: "width",
      terminalFontSize: "small",
      controls: false,
    });
    players.set(recording.id, player);
  }

  async function refresh() {
    let status;
    try {
      const response = await fetch(root.dataset.statusUrl, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      status = await response.json();
    } catch (error) {
      message.textContent = "Cannot reach pamsite (" + error.message + "); retrying.";
      setTimeout(refresh, STATUS_MS);
      return;
    }
    for (const recording of status.recordings) {
      if (!players.has(recording.id) && !recording.finalized) addPlayer(recording);
    }
    if (status.live) {
      const count = players.size;
      message.textContent = count
        ? "Watching " + count + " terminal" + (count > 1 ? "s" : "") + " as they are recorded."
        : "No terminal open in this session yet (commands and transfers are on the replay page).";
      if (status.terminate_requested) message.textContent += " Termination requested.";
      setTimeout(refresh, STATUS_MS);
    } else {
      sessionEnded = true;
      badge.textContent = "ended";
      badge.className = "badge";
      message.textContent = "The session has ended" + (status.end_reason ? ": " + status.end_reason : "") + ". ";
      const link = document.createElement("a");
      link.href = root.dataset.replayUrl;
      link.textContent = "Replay it";
      message.append(link);
    }
  }

  refresh();
})();
