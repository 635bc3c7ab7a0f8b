/*
 * Keyboard keys for the DiffuGen review panel (operators/panel.py).
 *
 * FiftyOne's Python panels cannot bind keys, so this plain script (no build step: it uses the
 * React and @fiftyone/* modules the App exposes to plugins as window globals, which is what a
 * built plugin bundle does too) registers one component, "DiffugenReviewKeys". The panel renders
 * it with `on_key` (the panel method to call), `keys` (the keys it handles) and `label_id` (the
 * label on screen). While the panel is shown, a key press outside text fields, without Ctrl, Alt
 * or Meta, and not in a sample modal, is sent to the panel as {key, label_id}: the label decided
 * is always the one the reviewer sees. One key at a time: keys pressed while the previous one is
 * being handled are dropped. Buttons take the focus with Tab and are pressed with Space, or with
 * Enter, which the App swallows before it reaches them: for a button of this panel it is pressed
 * here. fiftyone.yml names this file as the plugin's js_bundle.
 */
(function () {
  "use strict";
  var React = window.React;
  var fop = window.__fop__;
  var foo = window.__foo__;
  if (!React || !fop || !foo || !foo.useTriggerPanelEvent) {
    console.warn("DiffuGen review keys: the App does not expose React/@fiftyone plugins; use the panel's buttons");
    return;
  }
  var h = React.createElement;

  var NOT_TYPED = ["button", "checkbox", "radio", "range", "reset", "submit", "file", "color", "image"];

  function typingIn(el) {
    // a text field (where the keys are text) has the focus; a slider, checkbox or button does not count
    if (!el || !el.tagName) return false;
    var tag = el.tagName.toUpperCase();
    if (tag === "INPUT") return NOT_TYPED.indexOf((el.type || "text").toLowerCase()) < 0;
    return tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable;
  }

  function ReviewKeys(props) {
    var view = (props.schema && props.schema.view) || {};
    var trigger = foo.useTriggerPanelEvent();
    var latest = React.useRef({ view: view, trigger: trigger });
    latest.current = { view: view, trigger: trigger };
    var busy = React.useRef(false);
    var root = React.useRef(null);

    React.useEffect(function () {
      function onKeyDown(event) {
        var v = latest.current.view;
        var keys = v.keys || [];
        var el = root.current;
        if (!el || !el.isConnected || el.offsetParent === null) return; // the panel is not shown
        if (event.key === "Enter" && event.defaultPrevented) {
          // The App takes Enter before it reaches a focused button of this panel: press the button.
          var panelEl = el.closest('[data-cy^="panel-content-"]');
          var target = event.target;
          if (!event.repeat && panelEl && target && target.tagName === "BUTTON" && !target.disabled &&
              panelEl.contains(target)) {
            target.click();
          }
          return;
        }
        if (event.defaultPrevented || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
        if (keys.indexOf(event.key) < 0 || typingIn(event.target) || !v.on_key) return;
        var modal = document.querySelector('[data-cy="modal"]');
        if (modal && !modal.contains(el)) return; // a sample modal is open over the grid
        event.preventDefault();
        event.stopPropagation();
        if (busy.current) return;
        busy.current = true;
        var done = function () {
          busy.current = false;
        };
        try {
          latest.current.trigger(v.on_key, { key: event.key, label_id: v.label_id || null }, false, done);
        } catch (err) {
          done();
          console.error("DiffuGen review keys:", err);
        }
      }
      document.addEventListener("keydown", onKeyDown);
      return function () {
        document.removeEventListener("keydown", onKeyDown);
      };
    }, []);

    return h(
      "div",
      {
        ref: root,
        "data-testid": "diffugen-review-keys",
        style: { fontSize: "0.8rem", opacity: 0.75, padding: "2px 0" },
      },
      view.caption || ""
    );
  }

  fop.registerComponent({
    name: "DiffugenReviewKeys",
    label: "DiffuGen review keys",
    component: ReviewKeys,
    type: fop.PluginComponentType.Component,
    activator: function () {
      return true;
    },
  });
})();
