require ["fileinto"];
# nothing to do after the user's own filters in this example
keep;
