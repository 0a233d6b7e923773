// The request form: the ticket rule under the ticket field follows the account chosen
// (each account's policy has its own rule; the page is rendered with the first one's).
(function () {
  "use strict";
  var data = document.getElementById("ticket-rules");
  var select = document.getElementById("id_account");
  var rule = document.getElementById("ticket-rule");
  if (!data || !select || !rule) {
    return;
  }
  var rules = JSON.parse(data.textContent);
  function show() {
    if (Object.prototype.hasOwnProperty.call(rules, select.value)) {
      rule.textContent = rules[select.value];
    }
  }
  select.addEventListener("change", show);
  show();
})();
